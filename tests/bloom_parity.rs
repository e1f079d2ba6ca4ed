//! BLOOM logits and generations against Hugging Face transformers' `BloomForCausalLM` on the
//! same weights (tests/fixtures/bloom_tiny*, made by tools/reference/make_bloom_fixtures.py),
//! plus presets, checkpoint loading and config errors.
mod common;

use common::parity::{assert_same_model, copy_config, logits};

use std::path::{Path, PathBuf};

use common::max_abs_diff;
use mindformers::core::checkpoint::{save_safetensors, SafeTensors};
use mindformers::{
    generate, AutoConfig, AutoModel, BloomConfig, BloomForCausalLM, CausalLM, ForwardInput,
    GenerationConfig, ModelConfig, PreTrainedModel,
};
use serde_json::Value;
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;

/// 4 heads, tied head; 6 heads (non-power-of-two ALiBi slopes), post-LayerNorm residual,
/// untied head.
const VARIANTS: &[&str] = &["bloom_tiny", "bloom_tiny_6heads"];

fn dir(name: &str) -> PathBuf {
    common::fixtures().join(name)
}

fn load(name: &str) -> (BloomForCausalLM, SafeTensors) {
    let model = BloomForCausalLM::from_dir(&dir(name)).unwrap();
    let expected = SafeTensors::open(dir(name).join("expected.safetensors")).unwrap();
    (model, expected)
}

#[test]
fn single_sequence_logits_match() {
    for name in VARIANTS {
        common::parity::single_logits(&load(name).0, &common::parity::Fixture::open(name));
    }
}

#[test]
fn kv_cache_step_by_step_matches_transformers_cache() {
    for name in VARIANTS {
        common::parity::cached_logits(&load(name).0, &common::parity::Fixture::open(name));
    }
}

#[test]
fn left_padded_batch_matches_on_real_tokens() {
    for name in VARIANTS {
        common::parity::left_padded(&load(name).0, &common::parity::Fixture::open(name));
    }
}

#[test]
fn greedy_ids_match_with_and_without_cache() {
    for name in VARIANTS {
        common::parity::greedy(&load(name).0, &common::parity::Fixture::open(name));
    }
}

#[test]
fn batched_greedy_with_left_padding_matches() {
    for name in VARIANTS {
        common::parity::batched_greedy(&load(name).0, &common::parity::Fixture::open(name));
    }
}

#[test]
fn beam_search_ids_match() {
    for name in VARIANTS {
        common::parity::beam(&load(name).0, &common::parity::Fixture::open(name));
    }
}

#[test]
fn sharded_checkpoint_and_unprefixed_names_load() {
    let (model, exp) = load("bloom_tiny");
    let sharded = BloomForCausalLM::from_dir(&dir("bloom_tiny_sharded")).unwrap();
    let ids = exp.get("single_input_ids").unwrap();
    assert_eq!(
        max_abs_diff(&logits(&model, &ids), &logits(&sharded, &ids)),
        0.0
    );
    let st = SafeTensors::open(dir("bloom_tiny_sharded")).unwrap();
    assert!(st.origin().ends_with("model.safetensors.index.json"));

    // BigScience's checkpoints were saved from BloomModel: no `transformer.` prefix.
    let src = SafeTensors::open(dir("bloom_tiny")).unwrap();
    let bare: Vec<(String, Tensor)> = src
        .names()
        .map(|n| {
            (
                n.trim_start_matches("transformer.").to_string(),
                src.get(n).unwrap(),
            )
        })
        .collect();
    assert!(bare.iter().any(|(n, _)| n == "word_embeddings.weight"));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir("bloom_tiny").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    save_safetensors(tmp.path().join("model.safetensors"), &bare, None).unwrap();
    let back = BloomForCausalLM::from_dir(tmp.path()).unwrap();
    assert_eq!(
        max_abs_diff(&logits(&model, &ids), &logits(&back, &ids)),
        0.0
    );
}

#[test]
fn auto_classes_dispatch_on_model_type() {
    for name in VARIANTS {
        let path = dir(name);
        let cfg = AutoConfig::from_pretrained(path.to_str().unwrap()).unwrap();
        assert_eq!(cfg.model_type(), "bloom");
        let c = cfg.clone().into_bloom().unwrap();
        assert!(cfg.into_llama().is_err());
        let model = AutoModel::from_pretrained(path.to_str().unwrap()).unwrap();
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(path.join("expected.json")).unwrap())
                .unwrap();
        assert_eq!(
            model.num_parameters() as u64,
            want["num_parameters"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(model.num_parameters(), c.num_parameters());
        let exp = SafeTensors::open(path.join("expected.safetensors")).unwrap();
        let d = max_abs_diff(
            &logits(model.as_ref(), &exp.get("single_input_ids").unwrap()),
            &exp.get("single_logits").unwrap(),
        );
        assert!(d <= TOL, "{name}: {d}");
        let from_config = AutoModel::from_config(&ModelConfig::new(c)).unwrap();
        assert_eq!(from_config.num_parameters(), model.num_parameters());
    }
}

#[test]
fn presets_have_published_shapes_and_parameter_counts() {
    let want: &[(&str, usize, &str)] = &[
        ("bloom_560m", 559_214_592, "bigscience/bloom-560m"),
        ("bloom_7.1b", 7_069_016_064, "bigscience/bloom-7b1"),
    ];
    let names = mindformers::models::auto::preset_names();
    for &(name, params, repo) in want {
        assert!(names.contains(&name), "{name} not listed");
        let c = BloomConfig::from_pretrained(name).unwrap();
        assert_eq!(c.num_parameters(), params, "{name}");
        assert_eq!(c.hub_repo.as_deref(), Some(repo), "{name}");
        assert_eq!(
            AutoConfig::from_pretrained(name).unwrap().model_type(),
            "bloom"
        );
    }
    let over = AutoConfig::from_pretrained_with(
        "bloom_560m",
        &[
            ("n_layer".into(), "2".into()),
            ("hidden_size".into(), "64".into()),
            ("vocab_size".into(), "100".into()),
        ],
    )
    .unwrap()
    .into_bloom()
    .unwrap();
    assert_eq!((over.n_layer, over.hidden_size), (2, 64));
    let model = BloomForCausalLM::new(&over).unwrap();
    assert_eq!(model.num_parameters(), over.num_parameters());
    let err = AutoConfig::from_pretrained_with("bloom_560m", &[("n_layers".into(), "2".into())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown key(s) n_layers"), "{err}");
    assert!(BloomConfig::from_pretrained("llama2_7b").is_err());
}

#[test]
fn random_model_trains() {
    let cfg = BloomConfig {
        vocab_size: 64,
        hidden_size: 32,
        n_head: 4,
        n_layer: 2,
        ..BloomConfig::default()
    };
    tch::manual_seed(0);
    let model = BloomForCausalLM::new(&cfg).unwrap();
    let ids = Tensor::from_slice(&[3i64, 9, 17, 4, 22, 5]).view([1, 6]);
    let lm_loss = |m: &BloomForCausalLM| {
        let out = m
            .forward(
                &ForwardInput {
                    input_ids: Some(&ids),
                    train: true,
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        out.narrow(1, 0, 5)
            .reshape([5, 64])
            .cross_entropy_for_logits(&ids.narrow(1, 1, 5).reshape([5]))
    };
    let mut opt =
        tch::nn::OptimizerConfig::build(tch::nn::Adam::default(), model.var_store(), 1e-2).unwrap();
    let first = lm_loss(&model).double_value(&[]);
    for _ in 0..20 {
        opt.backward_step(&lm_loss(&model));
    }
    let last = lm_loss(&model).double_value(&[]);
    assert!(last < first * 0.5, "loss {first} -> {last}");
}

#[test]
fn save_pretrained_round_trips() {
    for name in VARIANTS {
        let (model, exp) = load(name);
        let out = tempfile::tempdir().unwrap();
        model.save_pretrained(out.path()).unwrap();
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
                .unwrap();
        let orig: Value =
            serde_json::from_str(&std::fs::read_to_string(dir(name).join("config.json")).unwrap())
                .unwrap();
        for key in [
            "model_type",
            "n_head",
            "n_layer",
            "hidden_size",
            "tie_word_embeddings",
            "apply_residual_connection_post_layernorm",
        ] {
            assert_eq!(cfg[key], orig[key], "{name}: {key}");
        }
        let st = SafeTensors::open(out.path()).unwrap();
        assert!(st.contains("transformer.h.0.self_attention.query_key_value.weight"));
        assert_eq!(
            st.contains("lm_head.weight"),
            !model.config().tie_word_embeddings,
            "{name}: a tied head is not stored, as transformers writes it"
        );
        let back = BloomForCausalLM::from_dir(out.path()).unwrap();
        // Equal up to the bookkeeping keys (dtype, versions) each writer stamps.
        let plain = |c: &BloomConfig| BloomConfig {
            extra: Default::default(),
            ..c.clone()
        };
        assert_eq!(plain(back.config()), plain(model.config()));
        assert_same_model(&model, &back, &exp.get("single_input_ids").unwrap());
    }
}

#[test]
fn checkpoint_name_or_path_loads_weights_in_new() {
    let (reference, exp) = load("bloom_tiny");
    let mut cfg = reference.config().clone();
    cfg.checkpoint_name_or_path = dir("bloom_tiny").display().to_string();
    let model = BloomForCausalLM::new(&cfg).unwrap();
    assert_same_model(&reference, &model, &exp.get("single_input_ids").unwrap());
}

#[test]
fn bf16_inference_runs_close_to_f32() {
    let (mut model, exp) = load("bloom_tiny_6heads");
    let ids = exp.get("single_input_ids").unwrap();
    let want = exp.get("single_logits").unwrap();
    model
        .to(mindformers::Device::Cpu, mindformers::DType::BF16)
        .unwrap();
    let got = logits(&model, &ids);
    assert_eq!(got.kind(), Kind::BFloat16);
    let scale = want.abs().max().double_value(&[]);
    let d = max_abs_diff(&got, &want);
    println!("bf16 max abs diff {d:.3} (logit scale {scale:.1})");
    assert!(d <= 0.05 * scale, "bf16 diff {d} vs scale {scale}");
    let cfg = GenerationConfig {
        max_new_tokens: Some(4),
        ..model.generation_config()
    };
    assert_eq!(
        generate(&model, &[vec![5, 17, 100]], &cfg, None).unwrap()[0].len(),
        7
    );
}

fn load_err(dir: &Path) -> String {
    BloomForCausalLM::from_dir(dir).unwrap_err().to_string()
}

type ConfigEdit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn bad_checkpoints_configs_and_inputs_are_named_errors() {
    let src = dir("bloom_tiny_6heads");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_config(&src, d, |_| {});
    assert!(load_err(d).contains("no model.safetensors"));

    let st = SafeTensors::open(&src).unwrap();
    let mut tensors: Vec<(String, Tensor)> = st
        .names()
        .filter(|n| *n != "transformer.ln_f.bias")
        .map(|n| (n.to_string(), st.get(n).unwrap()))
        .collect();
    save_safetensors(d.join("model.safetensors"), &tensors, None).unwrap();
    let err = load_err(d);
    assert!(
        err.contains("missing tensor(s): transformer.ln_f.bias"),
        "{err}"
    );
    let i = tensors
        .iter()
        .position(|(n, _)| n == "transformer.h.1.self_attention.query_key_value.weight")
        .unwrap();
    tensors[i].1 = Tensor::zeros([24, 24], (Kind::Float, tch::Device::Cpu));
    save_safetensors(d.join("model.safetensors"), &tensors, None).unwrap();
    let err = load_err(d);
    assert!(
        err.contains("query_key_value.weight' has shape [24, 24]") && err.contains("[72, 24]"),
        "{err}"
    );

    let cases: Vec<(ConfigEdit, &str)> = vec![
        (
            Box::new(|v| v["n_head"] = 5.into()),
            "hidden_size 24 is not divisible by n_head 5",
        ),
        (
            Box::new(|v| v["hidden_dropout"] = 1.5.into()),
            "hidden_dropout = 1.5 is not in [0, 1)",
        ),
    ];
    for (edit, want) in cases {
        copy_config(&src, d, edit);
        let err = load_err(d);
        assert!(
            err.contains("invalid config") && err.contains(want),
            "{err}"
        );
    }

    let (model, _) = load("bloom_tiny");
    let _g = tch::no_grad_guard();
    let ids = Tensor::from_slice(&[5i64, 200]).view([1, 2]);
    let err = model
        .forward(&ForwardInput::ids(&ids), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside [0, 128)"), "{err}");
    let ids = Tensor::from_slice(&[5i64, 6]).view([1, 2]);
    let mask = Tensor::ones([1, 3], (Kind::Int64, tch::Device::Cpu));
    let err = model
        .forward(
            &ForwardInput {
                input_ids: Some(&ids),
                attention_mask: Some(&mask),
                ..Default::default()
            },
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("attention_mask is [1, 3]"), "{err}");
}
