//! PanGu-α logits and generations against a reference on the same weights
//! (tests/fixtures/pangualpha_tiny*, made by tools/reference/make_pangualpha_fixtures.py),
//! plus presets, checkpoint loading and config errors.
//!
//! No Hugging Face class exists for PanGu-α: the reference is the plain PyTorch
//! implementation in tools/reference/pangualpha_reference.py, written from the PanGu-α paper
//! and MindFormers' model card (its greedy/beam ids come from transformers' `generate`).
mod common;

use common::parity::{assert_same_model, copy_config, logits};

use std::path::{Path, PathBuf};

use common::max_abs_diff;
use mindformers::core::checkpoint::{save_safetensors, SafeTensors};
use mindformers::{
    generate, AutoConfig, AutoModel, CausalLM, ForwardInput, GenerationConfig, ModelConfig,
    PanguAlphaConfig, PanguAlphaHeadModel, PreTrainedModel,
};
use serde_json::Value;
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;

/// 4 heads with fast_gelu; 8 heads, gelu, residual after the LayerNorm.
const VARIANTS: &[&str] = &["pangualpha_tiny", "pangualpha_tiny_postln"];

fn dir(name: &str) -> PathBuf {
    common::fixtures().join(name)
}

fn load(name: &str) -> (PanguAlphaHeadModel, SafeTensors) {
    let model = PanguAlphaHeadModel::from_dir(&dir(name)).unwrap();
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
fn auto_classes_dispatch_on_model_type() {
    for name in VARIANTS {
        let path = dir(name);
        let cfg = AutoConfig::from_pretrained(path.to_str().unwrap()).unwrap();
        assert_eq!(cfg.model_type(), "pangualpha");
        let c = cfg.clone().into_pangualpha().unwrap();
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
    // Per layer: q/k/v/out 4(h² + h), MLP 2hf + f + h, two LayerNorms 4h; embeddings for the
    // vocabulary and twice the positions (position + top query), and the final LayerNorm.
    let count = |v: usize, s: usize, h: usize, f: usize, l: usize| {
        (v + 2 * s) * h + l * (4 * (h * h + h) + 2 * h * f + f + h + 4 * h) + 2 * h
    };
    let want: &[(&str, usize)] = &[
        ("pangualpha_2_6b", count(40000, 1024, 2560, 10240, 32)),
        ("pangualpha_13b", count(40000, 1024, 5120, 20480, 40)),
    ];
    assert_eq!(want[0].1, 2_625_295_360);
    assert_eq!(want[1].1, 12_800_870_400);
    let names = mindformers::models::auto::preset_names();
    for &(name, params) in want {
        assert!(names.contains(&name), "{name} not listed");
        let c = PanguAlphaConfig::from_pretrained(name).unwrap();
        assert_eq!(c.num_parameters(), params, "{name}");
        assert_eq!(c.hub_repo, None, "{name}: no published HF weights");
        assert_eq!(
            AutoConfig::from_pretrained(name).unwrap().model_type(),
            "pangualpha"
        );
    }
    let over = AutoConfig::from_pretrained_with(
        "pangualpha_2_6b",
        &[
            ("num_layers".into(), "2".into()),
            ("hidden_size".into(), "64".into()),
            ("ffn_hidden_size".into(), "128".into()),
            ("num_heads".into(), "4".into()),
            ("vocab_size".into(), "100".into()),
        ],
    )
    .unwrap()
    .into_pangualpha()
    .unwrap();
    assert_eq!((over.num_layers, over.hidden_size), (2, 64));
    let model = PanguAlphaHeadModel::new(&over).unwrap();
    assert_eq!(model.num_parameters(), over.num_parameters());
    let err =
        AutoConfig::from_pretrained_with("pangualpha_2_6b", &[("num_layer".into(), "2".into())])
            .unwrap_err()
            .to_string();
    assert!(err.contains("unknown key(s) num_layer"), "{err}");
    assert!(PanguAlphaConfig::from_pretrained("glm4_9b").is_err());
    // Without weights anywhere, loading the preset names where to put them.
    let err = PanguAlphaHeadModel::from_pretrained("pangualpha_2_6b");
    assert!(err.is_err());
}

#[test]
fn random_model_trains() {
    // The seed's PanguAlphaConfig(hidden_size=768, ffn_hidden_size=768*4, num_layers=12,
    // num_heads=12, checkpoint_name_or_path='') constructs as written; it trains here shrunk
    // in width, depth and vocabulary (dropout on, as MindFormers' defaults).
    let seed = PanguAlphaConfig {
        hidden_size: 768,
        ffn_hidden_size: 768 * 4,
        num_layers: 12,
        num_heads: 12,
        checkpoint_name_or_path: String::new(),
        ..Default::default()
    };
    seed.validate("seed").unwrap();
    let cfg = PanguAlphaConfig {
        vocab_size: 64,
        hidden_size: 32,
        ffn_hidden_size: 32 * 4,
        num_layers: 2,
        num_heads: 4,
        ..seed
    };
    tch::manual_seed(0);
    let model = PanguAlphaHeadModel::new(&cfg).unwrap();
    let ids = Tensor::from_slice(&[3i64, 9, 17, 4, 22, 5]).view([1, 6]);
    let lm_loss = |m: &PanguAlphaHeadModel| {
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
            "num_heads",
            "num_layers",
            "hidden_size",
            "ffn_hidden_size",
            "seq_length",
            "hidden_act",
            "post_layernorm_residual",
        ] {
            assert_eq!(cfg[key], orig[key], "{name}: {key}");
        }
        let st = SafeTensors::open(out.path()).unwrap();
        assert!(st.contains("backbone.top_query_embedding.embedding_table"));
        assert!(st.contains("backbone.top_query_layer.attention.dense1.weight"));
        let back = PanguAlphaHeadModel::from_dir(out.path()).unwrap();
        // Equal up to the bookkeeping keys (dtype, versions) each writer stamps.
        let plain = |c: &PanguAlphaConfig| PanguAlphaConfig {
            extra: Default::default(),
            ..c.clone()
        };
        assert_eq!(plain(back.config()), plain(model.config()));
        assert_same_model(&model, &back, &exp.get("single_input_ids").unwrap());
    }
}

#[test]
fn checkpoint_name_or_path_loads_weights_in_new() {
    let (reference, exp) = load("pangualpha_tiny");
    let mut cfg = reference.config().clone();
    cfg.checkpoint_name_or_path = dir("pangualpha_tiny").display().to_string();
    let model = PanguAlphaHeadModel::new(&cfg).unwrap();
    assert_same_model(&reference, &model, &exp.get("single_input_ids").unwrap());
}

#[test]
fn bf16_inference_runs_close_to_f32() {
    let (mut model, exp) = load("pangualpha_tiny_postln");
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
    PanguAlphaHeadModel::from_dir(dir).unwrap_err().to_string()
}

type ConfigEdit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn bad_checkpoints_configs_and_inputs_are_named_errors() {
    let src = dir("pangualpha_tiny");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_config(&src, d, |_| {});
    assert!(load_err(d).contains("no model.safetensors"));

    let st = SafeTensors::open(&src).unwrap();
    let mut tensors: Vec<(String, Tensor)> = st
        .names()
        .filter(|n| *n != "backbone.top_query_embedding.embedding_table")
        .map(|n| (n.to_string(), st.get(n).unwrap()))
        .collect();
    save_safetensors(d.join("model.safetensors"), &tensors, None).unwrap();
    let err = load_err(d);
    assert!(
        err.contains("missing tensor(s): backbone.top_query_embedding.embedding_table"),
        "{err}"
    );
    let i = tensors
        .iter()
        .position(|(n, _)| n == "backbone.blocks.1.output.mapping.weight")
        .unwrap();
    tensors[i].1 = Tensor::zeros([32, 64], (Kind::Float, tch::Device::Cpu));
    save_safetensors(d.join("model.safetensors"), &tensors, None).unwrap();
    let err = load_err(d);
    assert!(
        err.contains("mapping.weight' has shape [32, 64]") && err.contains("[64, 32]"),
        "{err}"
    );

    let cases: Vec<(ConfigEdit, &str)> = vec![
        (
            Box::new(|v| v["num_heads"] = 5.into()),
            "hidden_size 32 is not divisible by num_heads 5",
        ),
        (
            Box::new(|v| v["num_layers"] = 0.into()),
            "num_layers must be at least 1",
        ),
        (
            Box::new(|v| v["hidden_act"] = "gelu_fancy".into()),
            "activation 'gelu_fancy' is not supported",
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

    let (model, _) = load("pangualpha_tiny");
    let _g = tch::no_grad_guard();
    let ids = Tensor::from_slice(&[5i64, 200]).view([1, 2]);
    let err = model
        .forward(&ForwardInput::ids(&ids), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside [0, 128)"), "{err}");
    // 64 learned positions: position 64 does not exist.
    let ids = Tensor::from_slice(&[5i64; 65]).view([1, 65]);
    let err = model
        .forward(&ForwardInput::ids(&ids), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("position 64 is outside the 64 learned positions"),
        "{err}"
    );
}
