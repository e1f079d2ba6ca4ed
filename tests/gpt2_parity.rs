//! GPT-2 logits against Hugging Face transformers on the same weights
//! (tests/fixtures/gpt2_tiny, made by tools/reference/make_gpt2_fixtures.py).
mod common;

use common::max_abs_diff;
use mindformers::core::checkpoint::SafeTensors;
use mindformers::{CausalLM, ForwardInput, GPT2LMHeadModel, PreTrainedModel};
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;

fn load() -> (GPT2LMHeadModel, SafeTensors) {
    let dir = common::fixtures().join("gpt2_tiny");
    let model = GPT2LMHeadModel::from_dir(&dir).unwrap();
    let expected = SafeTensors::open(dir.join("expected.safetensors")).unwrap();
    (model, expected)
}

#[test]
fn single_sequence_logits_match() {
    let (model, exp) = load();
    let ids = exp.get("single_input_ids").unwrap();
    let want = exp.get("single_logits").unwrap();
    let _g = tch::no_grad_guard();
    let got = model.forward(&ForwardInput::ids(&ids), None).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d <= TOL, "max abs diff {d}");
}

#[test]
fn kv_cache_step_by_step_matches_full_pass() {
    let (model, exp) = load();
    let ids = exp.get("single_input_ids").unwrap();
    let want = exp.get("single_logits").unwrap();
    let t = ids.size()[1];
    let _g = tch::no_grad_guard();
    let mut cache = model.new_cache(2); // smaller than needed: the cache must grow
    let prefix = 3;
    let first = model
        .forward(
            &ForwardInput::ids(&ids.narrow(1, 0, prefix)),
            Some(&mut cache),
        )
        .unwrap();
    let mut pieces = vec![first];
    for i in prefix..t {
        pieces.push(
            model
                .forward(&ForwardInput::ids(&ids.narrow(1, i, 1)), Some(&mut cache))
                .unwrap(),
        );
    }
    assert_eq!(cache.len() as i64, t);
    let got = Tensor::cat(&pieces, 1);
    let d = max_abs_diff(&got, &want);
    assert!(d <= TOL, "max abs diff {d}");
}

#[test]
fn left_padded_batch_matches_on_real_tokens() {
    let (model, exp) = load();
    let ids = exp.get("batch_input_ids").unwrap();
    let mask = exp.get("batch_attention_mask").unwrap();
    let pos = exp.get("batch_position_ids").unwrap();
    let want = exp.get("batch_logits").unwrap();
    let _g = tch::no_grad_guard();
    let got = model
        .forward(
            &ForwardInput {
                input_ids: Some(&ids),
                attention_mask: Some(&mask),
                position_ids: Some(&pos),
                train: false,
                last_only: false,
            },
            None,
        )
        .unwrap();
    let real = mask.to_kind(Kind::Bool).unsqueeze(-1);
    let d = max_abs_diff(
        &got.masked_fill(&real.logical_not(), 0.0),
        &want.masked_fill(&real.logical_not(), 0.0),
    );
    assert!(d <= TOL, "max abs diff {d}");
    assert!(
        !bool::try_from(got.isnan().any()).unwrap(),
        "padding rows must not produce NaN"
    );
}

#[test]
fn bf16_inference_runs_close_to_f32() {
    let (mut model, exp) = load();
    let ids = exp.get("single_input_ids").unwrap();
    let want = exp.get("single_logits").unwrap();
    model
        .to(mindformers::Device::Cpu, mindformers::DType::BF16)
        .unwrap();
    let _g = tch::no_grad_guard();
    let got = model.forward(&ForwardInput::ids(&ids), None).unwrap();
    assert_eq!(got.kind(), Kind::BFloat16);
    // bf16 keeps ~3 significant digits; the logits here are O(10).
    let scale = want.abs().max().double_value(&[]);
    let d = max_abs_diff(&got, &want);
    assert!(d <= 0.05 * scale, "bf16 diff {d} vs scale {scale}");
    // One token at a time goes through the decode kernels (bf16 weights widened to f32 in
    // registers) where the CPU has AVX2: as close to f32 as the full pass.
    let stepped = common::parity::token_by_token_logits(&model, &ids);
    assert_eq!(stepped.kind(), Kind::BFloat16);
    let ds = max_abs_diff(&stepped, &want);
    println!("bf16 max abs diff from f32: full pass {d:.4}, decode steps {ds:.4} (logit scale {scale:.2})");
    assert!(ds <= 0.05 * scale, "bf16 decode diff {ds} vs scale {scale}");
}

#[test]
fn bad_checkpoints_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixtures().join("gpt2_tiny");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let err = GPT2LMHeadModel::from_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no model.safetensors"), "{err}");

    // A checkpoint missing one tensor and with another mis-shaped.
    let st = SafeTensors::open(src.join("model.safetensors")).unwrap();
    let mut tensors: Vec<(String, Tensor)> = st
        .names()
        .filter(|n| !n.contains("ln_f.bias"))
        .map(|n| (n.to_string(), st.get(n).unwrap()))
        .collect();
    mindformers::core::checkpoint::save_safetensors(
        dir.path().join("model.safetensors"),
        &tensors,
        None,
    )
    .unwrap();
    let err = GPT2LMHeadModel::from_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing tensor(s): transformer.ln_f.bias"),
        "{err}"
    );
    let i = tensors
        .iter()
        .position(|(n, _)| n.ends_with("wpe.weight"))
        .unwrap();
    tensors[i].1 = Tensor::zeros([8, 32], (Kind::Float, tch::Device::Cpu));
    mindformers::core::checkpoint::save_safetensors(
        dir.path().join("model.safetensors"),
        &tensors,
        None,
    )
    .unwrap();
    let err = GPT2LMHeadModel::from_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("wpe.weight' has shape [8, 32]") && err.contains("[64, 32]"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("config.json"),
        "{\"n_embd\": 30, \"n_head\": 4}",
    )
    .unwrap();
    let err = GPT2LMHeadModel::from_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not divisible"), "{err}");
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let err = GPT2LMHeadModel::from_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("invalid config") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn decode_head_follows_weight_changes() {
    let (model, exp) = load();
    let ids = exp.get("single_input_ids").unwrap();
    let _g = tch::no_grad_guard();
    let last = |m: &GPT2LMHeadModel| {
        let full = m.forward(&ForwardInput::ids(&ids), None).unwrap();
        let fast = m
            .forward(
                &ForwardInput {
                    input_ids: Some(&ids),
                    last_only: true,
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        (full.select(1, ids.size()[1] - 1), fast.select(1, 0))
    };
    let (full, fast) = last(&model);
    assert!(max_abs_diff(&full, &fast) <= 1e-5);
    // An in-place change of the tied embedding must reach the cached decode head.
    let wte = model
        .parameters()
        .into_iter()
        .find(|(n, _)| n.ends_with("wte.weight"))
        .unwrap()
        .1;
    let _ = wte.detach().g_mul_scalar_(1.5);
    let (full2, fast2) = last(&model);
    assert!(max_abs_diff(&full2, &fast2) <= 1e-5);
    assert!(max_abs_diff(&fast, &fast2) > 1e-2);
}

#[test]
fn checkpoint_name_or_path_loads_weights_in_new() {
    let dir = common::fixtures().join("gpt2_tiny");
    let (reference, _) = load();
    let mut cfg = reference.config().clone();
    cfg.checkpoint_name_or_path = dir.display().to_string();
    let model = GPT2LMHeadModel::new(&cfg).unwrap();
    for ((n, a), (_, b)) in reference.parameters().iter().zip(model.parameters().iter()) {
        assert!(a.equal(b), "{n} differs");
    }
    cfg.checkpoint_name_or_path = "./no/such/checkpoint".into();
    let err = GPT2LMHeadModel::new(&cfg).unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
}
