//! GLM-4 logits and generations against Hugging Face transformers' `GlmForCausalLM` on the
//! same weights (tests/fixtures/glm_tiny*, made by tools/reference/make_glm_fixtures.py), plus
//! presets, checkpoint loading and config errors.
mod common;

use common::parity::{assert_same_model, copy_config, logits};

use std::path::{Path, PathBuf};

use common::max_abs_diff;
use mindformers::core::checkpoint::{save_safetensors, SafeTensors};
use mindformers::{
    generate, AutoConfig, AutoModel, CausalLM, ForwardInput, GenerationConfig, GlmConfig,
    GlmForCausalLM, ModelConfig, PreTrainedModel,
};
use serde_json::Value;
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;

/// GQA + q/k/v bias + half-rotary heads, untied; MQA, head_dim != hidden/heads, quarter-rotary
/// heads, tied.
const VARIANTS: &[&str] = &["glm_tiny", "glm_tiny_mqa"];

fn dir(name: &str) -> PathBuf {
    common::fixtures().join(name)
}

fn load(name: &str) -> (GlmForCausalLM, SafeTensors) {
    let model = GlmForCausalLM::from_dir(&dir(name)).unwrap();
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
fn sharded_checkpoint_loads() {
    let (model, exp) = load("glm_tiny");
    let sharded = GlmForCausalLM::from_dir(&dir("glm_tiny_sharded")).unwrap();
    let ids = exp.get("single_input_ids").unwrap();
    assert_eq!(
        max_abs_diff(&logits(&model, &ids), &logits(&sharded, &ids)),
        0.0
    );
    let st = SafeTensors::open(dir("glm_tiny_sharded")).unwrap();
    assert!(st.origin().ends_with("model.safetensors.index.json"));
}

#[test]
fn auto_classes_dispatch_on_model_type() {
    for name in VARIANTS {
        let path = dir(name);
        let cfg = AutoConfig::from_pretrained(path.to_str().unwrap()).unwrap();
        assert_eq!(cfg.model_type(), "glm");
        let c = cfg.clone().into_glm().unwrap();
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
    let names = mindformers::models::auto::preset_names();
    assert!(names.contains(&"glm4_9b"));
    let c = GlmConfig::from_pretrained("glm4_9b").unwrap();
    // Embedding and head 2 x 151552 x 4096; per layer q/o 2 x 4096², k/v 2 x 4096 x 256,
    // q/k/v bias 4608, gate_up + down 3 x 4096 x 13696, two norms; final norm.
    let per_layer = 2 * 4096 * 4096 + 2 * 4096 * 256 + 4608 + 3 * 4096 * 13696 + 2 * 4096;
    assert_eq!(
        c.num_parameters(),
        2 * 151552 * 4096 + 40 * per_layer + 4096
    );
    assert_eq!(c.num_parameters(), 9_399_951_360);
    assert_eq!(c.hub_repo.as_deref(), Some("THUDM/glm-4-9b-hf"));
    assert_eq!(
        (c.num_key_value_heads, c.head_size(), c.rotary_dim()),
        (2, 128, 64)
    );
    assert_eq!(c.eos_token_id, vec![151329, 151336, 151338]);
    assert_eq!(
        AutoConfig::from_pretrained("glm4_9b").unwrap().model_type(),
        "glm"
    );
    let over = AutoConfig::from_pretrained_with(
        "glm4_9b",
        &[
            ("num_hidden_layers".into(), "2".into()),
            ("hidden_size".into(), "64".into()),
            ("num_attention_heads".into(), "4".into()),
            ("head_dim".into(), "16".into()),
            ("intermediate_size".into(), "96".into()),
            ("vocab_size".into(), "100".into()),
        ],
    )
    .unwrap()
    .into_glm()
    .unwrap();
    assert_eq!((over.num_hidden_layers, over.hidden_size), (2, 64));
    let model = GlmForCausalLM::new(&over).unwrap();
    assert_eq!(model.num_parameters(), over.num_parameters());
    let err = AutoConfig::from_pretrained_with("glm4_9b", &[("num_layer".into(), "2".into())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown key(s) num_layer"), "{err}");
    assert!(GlmConfig::from_pretrained("bloom_560m").is_err());
}

#[test]
fn random_model_trains() {
    // The default (GLM-4-9B) config shrunk in width, depth and vocabulary.
    let cfg = GlmConfig {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 64,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: None,
        num_hidden_layers: 2,
        ..GlmConfig::default()
    };
    tch::manual_seed(0);
    let model = GlmForCausalLM::new(&cfg).unwrap();
    let ids = Tensor::from_slice(&[3i64, 9, 17, 4, 22, 5]).view([1, 6]);
    let lm_loss = |m: &GlmForCausalLM| {
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
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "hidden_size",
            "tie_word_embeddings",
            "attention_bias",
        ] {
            assert_eq!(cfg[key], orig[key], "{name}: {key}");
        }
        let st = SafeTensors::open(out.path()).unwrap();
        assert!(st.contains("model.layers.0.mlp.gate_up_proj.weight"));
        assert_eq!(
            cfg["rope_parameters"]["partial_rotary_factor"],
            orig["rope_parameters"]["partial_rotary_factor"]
        );
        assert_eq!(
            st.contains("lm_head.weight"),
            !model.config().tie_word_embeddings,
            "{name}: a tied head is not stored, as transformers writes it"
        );
        let back = GlmForCausalLM::from_dir(out.path()).unwrap();
        // Equal up to the bookkeeping keys (dtype, versions) each writer stamps.
        let plain = |c: &GlmConfig| GlmConfig {
            extra: Default::default(),
            rope_parameters: None,
            rope_theta: c.theta(),
            partial_rotary_factor: c.rotary_factor(),
            ..c.clone()
        };
        assert_eq!(plain(back.config()), plain(model.config()));
        assert_same_model(&model, &back, &exp.get("single_input_ids").unwrap());
    }
}

#[test]
fn checkpoint_name_or_path_loads_weights_in_new() {
    let (reference, exp) = load("glm_tiny_mqa");
    let mut cfg = reference.config().clone();
    cfg.checkpoint_name_or_path = dir("glm_tiny_mqa").display().to_string();
    let model = GlmForCausalLM::new(&cfg).unwrap();
    assert_same_model(&reference, &model, &exp.get("single_input_ids").unwrap());
}

#[test]
fn bf16_inference_runs_close_to_f32() {
    let (mut model, exp) = load("glm_tiny");
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
    GlmForCausalLM::from_dir(dir).unwrap_err().to_string()
}

type ConfigEdit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn bad_checkpoints_configs_and_inputs_are_named_errors() {
    let src = dir("glm_tiny");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_config(&src, d, |_| {});
    assert!(load_err(d).contains("no model.safetensors"));

    let st = SafeTensors::open(&src).unwrap();
    let mut tensors: Vec<(String, Tensor)> = st
        .names()
        .filter(|n| *n != "model.layers.1.self_attn.k_proj.bias")
        .map(|n| (n.to_string(), st.get(n).unwrap()))
        .collect();
    save_safetensors(d.join("model.safetensors"), &tensors, None).unwrap();
    let err = load_err(d);
    assert!(
        err.contains("missing tensor(s): model.layers.1.self_attn.k_proj.bias"),
        "{err}"
    );
    let i = tensors
        .iter()
        .position(|(n, _)| n == "model.layers.0.mlp.gate_up_proj.weight")
        .unwrap();
    tensors[i].1 = Tensor::zeros([64, 32], (Kind::Float, tch::Device::Cpu));
    save_safetensors(d.join("model.safetensors"), &tensors, None).unwrap();
    let err = load_err(d);
    assert!(
        err.contains("gate_up_proj.weight' has shape [64, 32]") && err.contains("[128, 32]"),
        "{err}"
    );

    let cases: Vec<(ConfigEdit, &str)> = vec![
        (
            Box::new(|v| v["num_key_value_heads"] = 3.into()),
            "num_attention_heads 4 is not divisible by num_key_value_heads 3",
        ),
        (
            Box::new(|v| v["rope_parameters"]["partial_rotary_factor"] = 0.375.into()),
            "rotary dimension 3 (head_dim 8 x partial_rotary_factor 0.375)",
        ),
        (
            Box::new(|v| v["rope_parameters"]["rope_type"] = "yarn".into()),
            "rope type 'yarn' is not supported for glm",
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

    let (model, _) = load("glm_tiny");
    let _g = tch::no_grad_guard();
    let ids = Tensor::from_slice(&[5i64, 200]).view([1, 2]);
    let err = model
        .forward(&ForwardInput::ids(&ids), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside [0, 128)"), "{err}");
    let ids = Tensor::from_slice(&[5i64, 6]).view([1, 2]);
    let pos = Tensor::from_slice(&[0i64, 1, 2]).view([1, 3]);
    let err = model
        .forward(
            &ForwardInput {
                input_ids: Some(&ids),
                position_ids: Some(&pos),
                ..Default::default()
            },
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("position_ids is [1, 3]"), "{err}");
}
