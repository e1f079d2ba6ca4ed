//! LLaMA-family logits and generations against Hugging Face transformers on the same weights
//! (tests/fixtures/llama_tiny*, qwen2_tiny; made by tools/reference/make_llama_fixtures.py),
//! plus presets, checkpoint loading and config errors.
mod common;

use common::parity::{assert_same_model, copy_config, logits};

use std::path::{Path, PathBuf};

use common::max_abs_diff;
use mindformers::core::checkpoint::{save_safetensors, SafeTensors};
use mindformers::{
    generate, AutoConfig, AutoModel, CausalLM, ForwardInput, GenerationConfig, LlamaConfig,
    LlamaForCausalLM, ModelConfig, PreTrainedModel,
};
use serde_json::Value;
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;

/// Every variant: MHA untied; GQA tied; MQA + llama3 RoPE + biases; dynamic NTK; Qwen2 + linear.
const VARIANTS: &[&str] = &[
    "llama_tiny",
    "llama_tiny_gqa",
    "llama_tiny_llama3",
    "llama_tiny_dynamic",
    "qwen2_tiny",
];

fn dir(name: &str) -> PathBuf {
    common::fixtures().join(name)
}

fn load(name: &str) -> (LlamaForCausalLM, SafeTensors) {
    let model = LlamaForCausalLM::from_dir(&dir(name)).unwrap();
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
    let (model, exp) = load("llama_tiny");
    let sharded = LlamaForCausalLM::from_dir(&dir("llama_tiny_sharded")).unwrap();
    let ids = exp.get("single_input_ids").unwrap();
    assert_eq!(
        max_abs_diff(&logits(&model, &ids), &logits(&sharded, &ids)),
        0.0
    );
    let st = SafeTensors::open(dir("llama_tiny_sharded")).unwrap();
    assert!(st.origin().ends_with("model.safetensors.index.json"));
}

#[test]
fn auto_classes_dispatch_on_model_type() {
    for (name, family) in [("llama_tiny_gqa", "llama"), ("qwen2_tiny", "qwen2")] {
        let path = dir(name);
        let cfg = AutoConfig::from_pretrained(path.to_str().unwrap()).unwrap();
        assert_eq!(cfg.model_type(), family);
        let c = cfg.clone().into_llama().unwrap();
        assert_eq!((c.num_attention_heads, c.kv_heads()), (4, 2));
        assert!(cfg.into_gpt2().is_err());
        let model = AutoModel::from_pretrained(path.to_str().unwrap()).unwrap();
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(path.join("expected.json")).unwrap())
                .unwrap();
        assert_eq!(
            model.num_parameters() as u64,
            want["num_parameters"].as_u64().unwrap()
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
        ("llama_7b", 6_738_415_616, "huggyllama/llama-7b"),
        ("llama_13b", 13_015_864_320, "huggyllama/llama-13b"),
        ("llama_65b", 65_285_660_672, "huggyllama/llama-65b"),
        ("llama2_7b", 6_738_415_616, "meta-llama/Llama-2-7b-hf"),
        ("llama2_13b", 13_015_864_320, "meta-llama/Llama-2-13b-hf"),
        ("llama2_70b", 68_976_648_192, "meta-llama/Llama-2-70b-hf"),
        ("llama3_8b", 8_030_261_248, "meta-llama/Meta-Llama-3-8B"),
        (
            "codellama_34b",
            33_743_970_304,
            "codellama/CodeLlama-34b-hf",
        ),
    ];
    let names = mindformers::models::auto::preset_names();
    for &(name, params, repo) in want {
        assert!(names.contains(&name), "{name} not listed");
        let c = LlamaConfig::from_pretrained(name).unwrap();
        assert_eq!(c.num_parameters(), params, "{name}");
        assert_eq!(c.hub_repo.as_deref(), Some(repo), "{name}");
    }
    let c = LlamaConfig::from_pretrained("llama2_70b").unwrap();
    assert_eq!((c.kv_heads(), c.max_position_embeddings), (8, 4096));
    let c = LlamaConfig::from_pretrained("llama3_8b").unwrap();
    assert_eq!(
        (c.rope_theta, c.eos_token_id.clone()),
        (500000.0, vec![128001])
    );
    let over = AutoConfig::from_pretrained_with(
        "llama2_7b",
        &[
            ("num_layers".into(), "2".into()),
            ("hidden_size".into(), "64".into()),
        ],
    )
    .unwrap()
    .into_llama()
    .unwrap();
    assert_eq!((over.num_hidden_layers, over.hidden_size), (2, 64));
    let err = AutoConfig::from_pretrained_with("llama2_7b", &[("num_layer".into(), "2".into())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown key(s) num_layer"), "{err}");
    assert!(LlamaConfig::from_pretrained("gpt2").is_err());
}

fn tiny_mf_config() -> LlamaConfig {
    // MindFormers' LlamaConfig(batch_size=1, seq_length=2048, num_layers=2), shrunk in width.
    LlamaConfig {
        batch_size: 1,
        hidden_size: 32,
        num_attention_heads: 4,
        vocab_size: 64,
        ..LlamaConfig::default()
            .with_seq_length(2048)
            .with_num_layers(2)
    }
}

#[test]
fn mindformers_style_config_builds_and_trains() {
    let cfg = tiny_mf_config();
    assert_eq!(cfg.ffn_size(), 256); // Meta's rule: 2/3 of 4x, rounded up to 256
    tch::manual_seed(0);
    let model = LlamaForCausalLM::new(&cfg).unwrap();
    assert_eq!(model.num_parameters(), cfg.num_parameters());
    let ids = Tensor::from_slice(&[3i64, 9, 17, 4, 22, 5]).view([1, 6]);
    let lm_loss = |m: &LlamaForCausalLM| {
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
    for name in [
        "llama_tiny",
        "llama_tiny_gqa",
        "llama_tiny_llama3",
        "qwen2_tiny",
    ] {
        let (model, exp) = load(name);
        let out = tempfile::tempdir().unwrap();
        model.save_pretrained(out.path()).unwrap();
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
                .unwrap();
        let orig: Value =
            serde_json::from_str(&std::fs::read_to_string(dir(name).join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["model_type"], orig["model_type"], "{name}");
        assert_eq!(
            cfg["tie_word_embeddings"], orig["tie_word_embeddings"],
            "{name}"
        );
        let st = SafeTensors::open(out.path()).unwrap();
        assert_eq!(
            st.contains("lm_head.weight"),
            !model.config().tie_word_embeddings,
            "{name}: a tied head is not stored, as transformers writes it"
        );
        let back = LlamaForCausalLM::from_dir(out.path()).unwrap();
        assert_eq!(
            back.config().rope().unwrap(),
            model.config().rope().unwrap()
        );
        assert_same_model(&model, &back, &exp.get("single_input_ids").unwrap());
    }
}

#[test]
fn checkpoint_name_or_path_loads_weights_in_new() {
    let (reference, exp) = load("llama_tiny_gqa");
    let mut cfg = reference.config().clone();
    cfg.checkpoint_name_or_path = dir("llama_tiny_gqa").display().to_string();
    let model = LlamaForCausalLM::new(&cfg).unwrap();
    assert_same_model(&reference, &model, &exp.get("single_input_ids").unwrap());
    cfg.checkpoint_name_or_path = "./no/such/checkpoint".into();
    let err = LlamaForCausalLM::new(&cfg).unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn bf16_inference_runs_close_to_f32() {
    for name in ["llama_tiny", "llama_tiny_llama3"] {
        let (mut model, exp) = load(name);
        let ids = exp.get("single_input_ids").unwrap();
        let want = exp.get("single_logits").unwrap();
        model
            .to(mindformers::Device::Cpu, mindformers::DType::BF16)
            .unwrap();
        let got = logits(&model, &ids);
        assert_eq!(got.kind(), Kind::BFloat16);
        let scale = want.abs().max().double_value(&[]);
        let d = max_abs_diff(&got, &want);
        assert!(d <= 0.05 * scale, "{name}: bf16 diff {d} vs scale {scale}");
        // Token by token: the decode kernels' bf16 path where the CPU has AVX2.
        let ds = max_abs_diff(&common::parity::token_by_token_logits(&model, &ids), &want);
        println!("{name}: bf16 max abs diff from f32: full pass {d:.3}, decode steps {ds:.3} (logit scale {scale:.1})");
        assert!(
            ds <= 0.05 * scale,
            "{name}: bf16 decode diff {ds} vs scale {scale}"
        );
        // Greedy decoding still runs end to end in bf16.
        let cfg = GenerationConfig {
            max_new_tokens: Some(4),
            ..model.generation_config()
        };
        assert_eq!(
            generate(&model, &[vec![5, 17, 100]], &cfg, None).unwrap()[0].len(),
            7
        );
    }
}

type ConfigEdit = Box<dyn FnOnce(&mut Value)>;

fn load_err(dir: &Path) -> String {
    LlamaForCausalLM::from_dir(dir).unwrap_err().to_string()
}

#[test]
fn bad_checkpoints_and_configs_are_named_errors() {
    let src = dir("llama_tiny");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_config(&src, d, |_| {});
    assert!(load_err(d).contains("no model.safetensors"));

    let st = SafeTensors::open(&src).unwrap();
    let mut tensors: Vec<(String, Tensor)> = st
        .names()
        .filter(|n| *n != "model.norm.weight")
        .map(|n| (n.to_string(), st.get(n).unwrap()))
        .collect();
    save_safetensors(d.join("model.safetensors"), &tensors, None).unwrap();
    let err = load_err(d);
    assert!(
        err.contains("missing tensor(s): model.norm.weight"),
        "{err}"
    );

    let i = tensors
        .iter()
        .position(|(n, _)| n == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    tensors[i].1 = Tensor::zeros([16, 32], (Kind::Float, tch::Device::Cpu));
    save_safetensors(d.join("model.safetensors"), &tensors, None).unwrap();
    let err = load_err(d);
    assert!(
        err.contains("k_proj.weight' has shape [16, 32]") && err.contains("[32, 32]"),
        "{err}"
    );

    // An untied checkpoint without its head.
    let no_head: Vec<(String, Tensor)> = st
        .names()
        .filter(|n| *n != "lm_head.weight")
        .map(|n| (n.to_string(), st.get(n).unwrap()))
        .collect();
    save_safetensors(d.join("model.safetensors"), &no_head, None).unwrap();
    assert!(load_err(d).contains("missing tensor(s): lm_head.weight"));

    let cases: Vec<(ConfigEdit, &str)> = vec![
        (
            Box::new(|v| {
                v["hidden_size"] = 30.into();
                v.as_object_mut().unwrap().remove("head_dim");
            }),
            "hidden_size 30 is not divisible by num_attention_heads 4",
        ),
        (
            Box::new(|v| v["num_key_value_heads"] = 3.into()),
            "num_attention_heads 4 is not divisible by num_key_value_heads 3",
        ),
        (
            Box::new(|v| {
                v["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "factor": 2.0})
            }),
            "rope_scaling type 'yarn' is not supported",
        ),
        (
            Box::new(|v| v["rope_scaling"] = serde_json::json!({"type": "llama3", "factor": 8.0})),
            "needs low_freq_factor",
        ),
        (
            Box::new(|v| v["hidden_act"] = "gelu_fancy".into()),
            "activation 'gelu_fancy' is not supported",
        ),
        (
            Box::new(|v| v["model_type"] = "mistral".into()),
            "not 'llama' or 'qwen2'",
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
    let err = AutoConfig::from_pretrained(d.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("'mistral' is not supported"), "{err}");

    let err = LlamaForCausalLM::new(&LlamaConfig {
        num_key_value_heads: Some(5),
        ..tiny_mf_config()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("not divisible by num_key_value_heads 5"),
        "{err}"
    );
}

#[test]
fn forward_rejects_bad_inputs() {
    let (model, _) = load("llama_tiny");
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
