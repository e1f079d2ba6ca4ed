//! The parity checks every causal LM family runs against its reference fixture
//! (`tests/fixtures/<name>/expected.safetensors` + `expected.json`, written by the
//! `tools/reference/make_*_fixtures.py` scripts): logits whole, step by step through the KV
//! cache and on a left-padded batch, then greedy (with and without cache), batched greedy and
//! beam-search ids.
use std::path::{Path, PathBuf};

use mindformers::core::checkpoint::SafeTensors;
use mindformers::{generate, CausalLM, ForwardInput, GenerationConfig};
use serde_json::Value;
use tch::{Kind, Tensor};

use super::max_abs_diff;

/// f32 logits tolerance against the reference.
pub const TOL: f64 = 1e-4;

/// A reference fixture: expected tensors and generation cases.
pub struct Fixture {
    /// Fixture name, for messages.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// `expected.safetensors`.
    pub expected: SafeTensors,
    /// `expected.json`'s `cases`.
    pub cases: Value,
}

impl Fixture {
    /// Opens `tests/fixtures/<name>`.
    pub fn open(name: &str) -> Self {
        let dir = super::fixtures().join(name);
        let expected = SafeTensors::open(dir.join("expected.safetensors")).unwrap();
        let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
        let cases = serde_json::from_str::<Value>(&text).unwrap()["cases"].clone();
        Fixture {
            name: name.to_string(),
            dir,
            expected,
            cases,
        }
    }

    fn get(&self, key: &str) -> Tensor {
        self.expected.get(key).unwrap()
    }
}

/// Token ids from a JSON array.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Logits of `ids` without a cache, under no_grad.
pub fn logits(model: &dyn CausalLM, ids: &Tensor) -> Tensor {
    let _g = tch::no_grad_guard();
    model.forward(&ForwardInput::ids(ids), None).unwrap()
}

/// Logits of `ids` fed one token at a time through a fresh KV cache (the decode path).
pub fn token_by_token_logits(model: &dyn CausalLM, ids: &Tensor) -> Tensor {
    let _g = tch::no_grad_guard();
    let mut cache = model.new_cache(ids.size()[1] as usize);
    let steps: Vec<Tensor> = (0..ids.size()[1])
        .map(|i| {
            model
                .forward(&ForwardInput::ids(&ids.narrow(1, i, 1)), Some(&mut cache))
                .unwrap()
        })
        .collect();
    Tensor::cat(&steps, 1)
}

/// Whole-sequence logits.
pub fn single_logits(model: &dyn CausalLM, fx: &Fixture) {
    let got = logits(model, &fx.get("single_input_ids"));
    let d = max_abs_diff(&got, &fx.get("single_logits"));
    println!("{}: single logits max abs diff {d:.2e}", fx.name);
    assert!(d <= TOL, "{}: max abs diff {d}", fx.name);
}

/// A prefix, then one token at a time through a cache that starts too small (so it must grow).
pub fn cached_logits(model: &dyn CausalLM, fx: &Fixture) {
    let ids = fx.get("single_input_ids");
    let want = fx.get("cached_logits");
    let prefix = fx.get("cached_prefix").int64_value(&[0]);
    let t = ids.size()[1];
    let _g = tch::no_grad_guard();
    let mut cache = model.new_cache(2);
    let mut pieces = vec![model
        .forward(
            &ForwardInput::ids(&ids.narrow(1, 0, prefix)),
            Some(&mut cache),
        )
        .unwrap()];
    for i in prefix..t {
        pieces.push(
            model
                .forward(&ForwardInput::ids(&ids.narrow(1, i, 1)), Some(&mut cache))
                .unwrap(),
        );
    }
    assert_eq!(cache.len() as i64, t);
    let d = max_abs_diff(&Tensor::cat(&pieces, 1), &want);
    println!(
        "{}: cached step-by-step logits max abs diff {d:.2e}",
        fx.name
    );
    assert!(d <= TOL, "{}: max abs diff {d}", fx.name);
}

/// A left-padded batch with its mask and positions, compared on the real tokens.
pub fn left_padded(model: &dyn CausalLM, fx: &Fixture) {
    let ids = fx.get("batch_input_ids");
    let mask = fx.get("batch_attention_mask");
    let pos = fx.get("batch_position_ids");
    let want = fx.get("batch_logits");
    let _g = tch::no_grad_guard();
    let got = model
        .forward(
            &ForwardInput {
                input_ids: Some(&ids),
                attention_mask: Some(&mask),
                position_ids: Some(&pos),
                ..Default::default()
            },
            None,
        )
        .unwrap();
    let pad = mask.to_kind(Kind::Bool).unsqueeze(-1).logical_not();
    let d = max_abs_diff(&got.masked_fill(&pad, 0.0), &want.masked_fill(&pad, 0.0));
    println!("{}: left-padded batch logits max abs diff {d:.2e}", fx.name);
    assert!(d <= TOL, "{}: max abs diff {d}", fx.name);
    assert!(
        !bool::try_from(got.isnan().any()).unwrap(),
        "{}: NaN",
        fx.name
    );
}

fn gen_cfg(model: &dyn CausalLM, case: &Value) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: Some(case["max_new_tokens"].as_u64().unwrap() as usize),
        ..model.generation_config()
    }
}

/// Greedy ids with and without the KV cache.
pub fn greedy(model: &dyn CausalLM, fx: &Fixture) {
    for (key, use_past) in [("greedy", true), ("greedy_nocache", false)] {
        let case = &fx.cases[key];
        let cfg = GenerationConfig {
            use_past,
            ..gen_cfg(model, case)
        };
        let out = generate(model, &[ids(&case["prompt"])], &cfg, None).unwrap();
        assert_eq!(out[0], ids(&case["output_ids"]), "{} {key}", fx.name);
    }
}

/// Greedy on prompts of different lengths in one left-padded batch.
pub fn batched_greedy(model: &dyn CausalLM, fx: &Fixture) {
    let case = &fx.cases["greedy_batch"];
    let all = |k: &str| -> Vec<Vec<u32>> { case[k].as_array().unwrap().iter().map(ids).collect() };
    let out = generate(model, &all("prompts"), &gen_cfg(model, case), None).unwrap();
    assert_eq!(out, all("output_ids"), "{}", fx.name);
}

/// Beam search with the reference's beams, length penalty and early stopping.
pub fn beam(model: &dyn CausalLM, fx: &Fixture) {
    let case = &fx.cases["beam"];
    let cfg = GenerationConfig {
        num_beams: case["num_beams"].as_u64().unwrap() as usize,
        length_penalty: case["length_penalty"].as_f64().unwrap(),
        early_stopping: case["early_stopping"].as_bool().unwrap(),
        ..gen_cfg(model, case)
    };
    let out = generate(model, &[ids(&case["prompt"])], &cfg, None).unwrap();
    assert_eq!(out[0], ids(&case["output_ids"]), "{}", fx.name);
}

/// Same parameter names and values, and identical logits on `ids`.
pub fn assert_same_model(a: &dyn CausalLM, b: &dyn CausalLM, ids: &Tensor) {
    let (pa, pb) = (a.parameters(), b.parameters());
    assert_eq!(pa.len(), pb.len());
    for ((na, ta), (nb, tb)) in pa.iter().zip(&pb) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs");
    }
    assert_eq!(max_abs_diff(&logits(a, ids), &logits(b, ids)), 0.0);
}

/// Copies `src/config.json` to `dst` with `edit` applied (bad-config tests).
pub fn copy_config(src: &Path, dst: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(dst.join("config.json"), v.to_string()).unwrap();
}
