//! Generation against transformers' `generate` on the tiny fixture model: greedy, batched with
//! left padding, beam search, repetition penalty, eos stop; plus sampling determinism, the KV
//! cache's cost and streaming.
mod common;

use std::cell::Cell;

use mindformers::models::layers::KvCache;
use mindformers::{
    generate, CausalLM, ForwardInput, GPT2LMHeadModel, GenerationConfig, PreTrainedModel, Streamer,
};
use serde_json::Value;

fn model() -> GPT2LMHeadModel {
    GPT2LMHeadModel::from_dir(&common::fixtures().join("gpt2_tiny")).unwrap()
}

fn cases() -> Value {
    let text = std::fs::read_to_string(common::fixtures().join("gpt2_tiny/expected.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["cases"].clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn cfg_for(m: &GPT2LMHeadModel, case: &Value) -> GenerationConfig {
    let mut c = m.generation_config();
    c.max_new_tokens = Some(case["max_new_tokens"].as_u64().unwrap() as usize);
    c.eos_token_id = vec![case["eos_token_id"].as_u64().unwrap() as u32];
    if let Some(p) = case.get("pad_token_id") {
        c.pad_token_id = Some(p.as_u64().unwrap() as u32);
    }
    c
}

#[test]
fn greedy_matches_transformers_with_and_without_cache() {
    let m = model();
    let case = &cases()["greedy"];
    for use_past in [true, false] {
        let cfg = GenerationConfig {
            use_past,
            ..cfg_for(&m, case)
        };
        let out = generate(&m, &[ids(&case["prompt"])], &cfg, None).unwrap();
        assert_eq!(out[0], ids(&case["output_ids"]), "use_past={use_past}");
    }
}

#[test]
fn left_padded_batch_equals_transformers_and_one_by_one() {
    let m = model();
    let case = &cases()["greedy_batch"];
    let prompts: Vec<Vec<u32>> = case["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let want: Vec<Vec<u32>> = case["output_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let cfg = cfg_for(&m, case);
    for use_past in [true, false] {
        let cfg = GenerationConfig {
            use_past,
            ..cfg.clone()
        };
        assert_eq!(
            generate(&m, &prompts, &cfg, None).unwrap(),
            want,
            "use_past={use_past}"
        );
    }
    for (p, w) in prompts.iter().zip(&want) {
        assert_eq!(
            &generate(&m, std::slice::from_ref(p), &cfg, None).unwrap()[0],
            w
        );
    }
}

#[test]
fn beam_search_matches_transformers() {
    let m = model();
    let case = &cases()["beam"];
    for use_past in [true, false] {
        let cfg = GenerationConfig {
            num_beams: case["num_beams"].as_u64().unwrap() as usize,
            length_penalty: case["length_penalty"].as_f64().unwrap(),
            early_stopping: case["early_stopping"].as_bool().unwrap(),
            use_past,
            ..cfg_for(&m, case)
        };
        let out = generate(&m, &[ids(&case["prompt"])], &cfg, None).unwrap();
        assert_eq!(out[0], ids(&case["output_ids"]), "use_past={use_past}");
    }
}

#[test]
fn beam_search_batch_equals_one_by_one() {
    let m = model();
    let prompts = vec![vec![300, 5, 88, 610, 42], vec![7, 9]];
    let cfg = GenerationConfig {
        num_beams: 3,
        max_new_tokens: Some(8),
        ..m.generation_config()
    };
    let batch = generate(&m, &prompts, &cfg, None).unwrap();
    for (p, b) in prompts.iter().zip(&batch) {
        assert_eq!(
            &generate(&m, std::slice::from_ref(p), &cfg, None).unwrap()[0],
            b
        );
    }
}

#[test]
fn repetition_penalty_and_eos_stop_match_transformers() {
    let m = model();
    let all = cases();
    let case = &all["repetition_penalty"];
    let cfg = GenerationConfig {
        repetition_penalty: case["repetition_penalty"].as_f64().unwrap(),
        ..cfg_for(&m, case)
    };
    assert_eq!(
        generate(&m, &[ids(&case["prompt"])], &cfg, None).unwrap()[0],
        ids(&case["output_ids"])
    );

    let case = &all["eos_stop"];
    let out = generate(&m, &[ids(&case["prompt"])], &cfg_for(&m, case), None).unwrap();
    assert_eq!(out[0], ids(&case["output_ids"]));
    assert_eq!(
        *out[0].last().unwrap(),
        case["eos_token_id"].as_u64().unwrap() as u32
    );
}

#[test]
fn sampling_is_seeded_and_filters_work() {
    let m = model();
    let prompt = vec![vec![5u32, 17, 300]];
    let base = GenerationConfig {
        do_sample: true,
        max_new_tokens: Some(15),
        top_k: 0,
        seed: Some(7),
        ..m.generation_config()
    };
    let a = generate(&m, &prompt, &base, None).unwrap();
    assert_eq!(
        a,
        generate(&m, &prompt, &base, None).unwrap(),
        "same seed, same ids"
    );
    let others: Vec<_> = (8..12)
        .map(|s| {
            generate(
                &m,
                &prompt,
                &GenerationConfig {
                    seed: Some(s),
                    ..base.clone()
                },
                None,
            )
            .unwrap()
        })
        .collect();
    assert!(
        others.iter().any(|o| o != &a),
        "different seeds should differ somewhere"
    );
    // top_k = 1 and a tiny top_p both leave only the most likely token: sampling = greedy.
    let greedy = generate(
        &m,
        &prompt,
        &GenerationConfig {
            do_sample: false,
            ..base.clone()
        },
        None,
    )
    .unwrap();
    assert_eq!(
        generate(
            &m,
            &prompt,
            &GenerationConfig {
                top_k: 1,
                ..base.clone()
            },
            None
        )
        .unwrap(),
        greedy
    );
    assert_eq!(
        generate(
            &m,
            &prompt,
            &GenerationConfig {
                top_p: 1e-6,
                ..base.clone()
            },
            None
        )
        .unwrap(),
        greedy
    );
    // A very low temperature sharpens to greedy as well.
    assert_eq!(
        generate(
            &m,
            &prompt,
            &GenerationConfig {
                temperature: 1e-4,
                ..base
            },
            None
        )
        .unwrap(),
        greedy
    );
}

#[test]
fn invalid_options_are_errors() {
    let m = model();
    let p = vec![vec![1u32, 2]];
    let g = m.generation_config();
    let err =
        |c: GenerationConfig, ps: &[Vec<u32>]| generate(&m, ps, &c, None).unwrap_err().to_string();
    assert!(err(
        GenerationConfig {
            top_p: 1.5,
            ..g.clone()
        },
        &p
    )
    .contains("top_p"));
    assert!(err(
        GenerationConfig {
            temperature: 0.0,
            ..g.clone()
        },
        &p
    )
    .contains("temperature"));
    assert!(err(
        GenerationConfig {
            num_beams: 2,
            do_sample: true,
            ..g.clone()
        },
        &p
    )
    .contains("beam sampling"));
    assert!(err(g.clone(), &[]).contains("no prompts"));
    assert!(err(g.clone(), &[vec![]]).contains("empty"));
    assert!(err(g.clone(), &[vec![5000]]).contains("outside the vocabulary"));
    assert!(err(
        GenerationConfig {
            max_new_tokens: Some(100),
            ..g
        },
        &p
    )
    .contains("exceeds the model's 64 positions"));
}

/// Counts the tokens each forward call processes, to show the cache never re-runs the prefix.
struct Counting {
    inner: GPT2LMHeadModel,
    tokens: Cell<i64>,
}

impl CausalLM for Counting {
    fn forward(
        &self,
        input: &ForwardInput<'_>,
        cache: Option<&mut KvCache>,
    ) -> mindformers::Result<tch::Tensor> {
        self.tokens
            .set(self.tokens.get() + input.input_ids.unwrap().size()[1]);
        self.inner.forward(input, cache)
    }
    fn new_cache(&self, capacity: usize) -> KvCache {
        self.inner.new_cache(capacity)
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn max_positions(&self) -> Option<usize> {
        self.inner.max_positions()
    }
    fn generation_config(&self) -> GenerationConfig {
        self.inner.generation_config()
    }
}

impl PreTrainedModel for Counting {
    fn model_type(&self) -> &str {
        self.inner.model_type()
    }
    fn task(&self) -> mindformers::Task {
        self.inner.task()
    }
    fn config_json(&self) -> Value {
        self.inner.config_json()
    }
    fn device(&self) -> tch::Device {
        self.inner.device()
    }
    fn save_pretrained(&self, dir: &std::path::Path) -> mindformers::Result<()> {
        self.inner.save_pretrained(dir)
    }
    fn to(&mut self, _: mindformers::Device, _: mindformers::DType) -> mindformers::Result<()> {
        Err(mindformers::core::invalid("not movable"))
    }
    fn num_parameters(&self) -> usize {
        self.inner.num_parameters()
    }
    fn parameters(&self) -> Vec<(String, tch::Tensor)> {
        self.inner.parameters()
    }
    fn load_weights(
        &self,
        ckpt: &mindformers::core::checkpoint::SafeTensors,
    ) -> mindformers::Result<()> {
        self.inner.load_weights(ckpt)
    }
}

#[test]
fn kv_cache_decode_steps_process_one_token() {
    let c = Counting {
        inner: model(),
        tokens: Cell::new(0),
    };
    let m = &c.inner;
    let new = 10;
    for prompt_len in [4usize, 30] {
        c.tokens.set(0);
        let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| 100 + i).collect();
        let cfg = GenerationConfig {
            max_new_tokens: Some(new),
            eos_token_id: vec![],
            ..m.generation_config()
        };
        let out = generate(&c, &[prompt], &cfg, None).unwrap();
        assert_eq!(out[0].len(), prompt_len + new);
        // The prompt once, then one token per step, whatever the prompt length.
        assert_eq!(c.tokens.get() as usize, prompt_len + new - 1);
    }
}

#[test]
fn streamer_receives_every_generated_token() {
    struct Collect(Vec<(usize, u32)>, bool);
    impl Streamer for Collect {
        fn put(&mut self, row: usize, token: u32) {
            self.0.push((row, token));
        }
        fn end(&mut self) {
            self.1 = true;
        }
    }
    let m = model();
    let prompts = vec![vec![5u32, 17], vec![9u32]];
    let cfg = GenerationConfig {
        max_new_tokens: Some(6),
        ..m.generation_config()
    };
    let mut s = Collect(Vec::new(), false);
    let out = generate(&m, &prompts, &cfg, Some(&mut s)).unwrap();
    assert!(s.1, "end() called");
    for (row, o) in out.iter().enumerate() {
        let streamed: Vec<u32> =
            s.0.iter()
                .filter(|(r, _)| *r == row)
                .map(|(_, t)| *t)
                .collect();
        assert_eq!(streamed, o[prompts[row].len()..]);
    }

    // The text streamer's pieces add up to the decoded continuation.
    let tok = mindformers::GPT2Tokenizer::from_pretrained("gpt2").unwrap();
    let mut text = String::new();
    let mut ts = mindformers::TextStreamer::new(&tok, |piece: &str| text.push_str(piece));
    let out = generate(&m, &prompts[..1], &cfg, Some(&mut ts)).unwrap();
    drop(ts);
    assert_eq!(text, tok.decode(&out[0][2..], true).unwrap());
}
