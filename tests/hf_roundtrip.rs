//! `save_pretrained` round trips: back into Rust here, and into transformers through
//! `cargo xtask test`, which runs tools/reference/check_hf_load.py on the directory this test
//! writes (target/tmp/hf_roundtrip).
mod common;

use std::path::PathBuf;

use common::max_abs_diff;
use mindformers::core::checkpoint::{save_safetensors, SafeTensors};
use mindformers::{
    AutoConfig, AutoModel, CausalLM, ForwardInput, GPT2LMHeadModel, PreTrainedModel,
};
use tch::Tensor;

#[test]
fn save_pretrained_round_trips_and_leaves_hf_files() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hf_roundtrip");
    let _ = std::fs::remove_dir_all(&out);
    let dir = out.join("model");
    let model = common::write_small_gpt2(&dir, 1234);

    // The files transformers needs, with its key names.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "gpt2");
    assert_eq!(cfg["n_embd"], 16);
    assert_eq!(cfg["n_layer"], 2);
    let st = SafeTensors::open(&dir).unwrap();
    assert!(st.contains("transformer.h.0.attn.c_attn.weight"));
    assert_eq!(
        st.shape("transformer.h.0.attn.c_attn.weight").unwrap(),
        [16, 48]
    );
    assert!(dir.join("tokenizer.json").is_file());

    let ids = Tensor::from_slice(&[31373i64, 0, 40, 1842, 11618, 11, 780]).unsqueeze(0);
    let _g = tch::no_grad_guard();
    let logits = model.forward(&ForwardInput::ids(&ids), None).unwrap();
    save_safetensors(
        out.join("expected.safetensors"),
        &[
            ("input_ids".into(), ids.shallow_clone()),
            ("logits".into(), logits.shallow_clone()),
        ],
        None,
    )
    .unwrap();

    let back = GPT2LMHeadModel::from_dir(&dir).unwrap();
    let again = back.forward(&ForwardInput::ids(&ids), None).unwrap();
    assert_eq!(max_abs_diff(&logits, &again), 0.0);

    // The Auto classes read the same directory.
    let dir_str = dir.to_str().unwrap();
    let c = AutoConfig::from_pretrained(dir_str)
        .unwrap()
        .into_gpt2()
        .unwrap();
    assert_eq!(c.hidden_size, 16);
    assert_eq!(
        AutoModel::from_pretrained(dir_str)
            .unwrap()
            .num_parameters(),
        model.num_parameters()
    );
}

#[test]
fn presets_resolve_and_cache_errors_explain() {
    let c = AutoConfig::from_pretrained("gpt2_13b")
        .unwrap()
        .into_gpt2()
        .unwrap();
    assert_eq!(
        (c.hidden_size, c.num_layers, c.num_heads, c.seq_length),
        (5120, 40, 40, 2048)
    );
    let c = AutoConfig::from_pretrained("gpt2")
        .unwrap()
        .into_gpt2()
        .unwrap();
    assert_eq!((c.hidden_size, c.num_layers, c.num_heads), (768, 12, 12));
    assert_eq!(c.hub_repo.as_deref(), Some("openai-community/gpt2"));
    let err = AutoConfig::from_pretrained("gpt5").unwrap_err().to_string();
    assert!(
        err.contains("unknown model 'gpt5'") && err.contains("gpt2_13b"),
        "{err}"
    );
    let err = AutoConfig::from_pretrained_with("gpt2", &[("num_layer".into(), "2".into())])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown key(s) num_layer") && err.contains("num_layers"),
        "{err}"
    );
    let c = AutoConfig::from_pretrained_with("gpt2", &[("num_layers".into(), "2".into())])
        .unwrap()
        .into_gpt2()
        .unwrap();
    assert_eq!(c.num_layers, 2);
}

#[test]
fn random_init_follows_the_hf_scheme() {
    let cfg = mindformers::GPT2Config {
        hidden_size: 128,
        num_layers: 4,
        num_heads: 4,
        vocab_size: 4000,
        ..Default::default()
    };
    tch::manual_seed(0);
    let model = GPT2LMHeadModel::new(&cfg).unwrap();
    let vars = model.var_store().variables();
    let std = |n: &str| vars[n].std(true).double_value(&[]);
    assert!((std("transformer.wte.weight") - 0.02).abs() < 0.002);
    assert!((std("transformer.h.0.attn.c_attn.weight") - 0.02).abs() < 0.002);
    // Residual projections are scaled by 1/sqrt(2 * num_layers).
    let proj = 0.02 / (8f64).sqrt();
    assert!((std("transformer.h.1.mlp.c_proj.weight") - proj).abs() < 0.1 * proj);
    assert_eq!(
        vars["transformer.h.0.attn.c_attn.bias"]
            .abs()
            .sum(tch::Kind::Double)
            .double_value(&[]),
        0.0
    );
    assert!(vars["transformer.ln_f.weight"]
        .equal(&Tensor::ones([128], (tch::Kind::Float, tch::Device::Cpu))));
    assert_eq!(
        model.num_parameters(),
        4000 * 128 + 1024 * 128 + 4 * (12 * 128 * 128 + 13 * 128) + 2 * 128
    );
}

#[test]
fn pipeline_save_pretrained_writes_model_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    common::write_small_gpt2(&src, 9);
    let p = mindformers::pipeline("text_generation")
        .model(src.to_str().unwrap())
        .max_length(12)
        .build()
        .unwrap();
    let out = dir.path().join("out");
    p.save_pretrained(&out).unwrap();
    let back = mindformers::pipeline("text_generation")
        .model(out.to_str().unwrap())
        .max_length(12)
        .build()
        .unwrap();
    let o = mindformers::GenerationOverrides::default();
    assert_eq!(
        p.call("hello!", &o).unwrap(),
        back.call("hello!", &o).unwrap()
    );
}
