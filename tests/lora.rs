//! LoRA: adapters start as a no-op, only adapters train (base weights stay bit-identical),
//! optimizer state shrinks, PEFT-layout save/load and merge give the same logits, bad configs
//! are clear errors. `cargo xtask test` then loads the adapter this test writes
//! (target/tmp/lora_roundtrip) with PEFT on transformers and compares logits.
mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::max_abs_diff;
use mindformers::core::checkpoint::save_safetensors;
use mindformers::models::lora::{self, LoraConfig};
use mindformers::{
    CausalLM, ForwardInput, GPT2Config, GPT2LMHeadModel, GeneratorDataset, LlamaConfig,
    LlamaForCausalLM, PreTrainedModel, Trainer, TrainingArguments,
};
use tch::Tensor;

/// libtorch's random generator is process-global: tests that seed it take turns.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny_gpt2(seed: i64) -> GPT2LMHeadModel {
    tch::manual_seed(seed);
    GPT2LMHeadModel::new(&GPT2Config {
        vocab_size: 64,
        seq_length: 32,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        embedding_dropout_prob: 0.0,
        hidden_dropout_rate: 0.0,
        attention_dropout_rate: 0.0,
        ..Default::default()
    })
    .unwrap()
}

fn ids() -> Tensor {
    Tensor::from_slice(&[1i64, 5, 9, 13, 17, 21, 2, 6, 10, 14, 18, 22]).reshape([2, 6])
}

fn logits(m: &dyn CausalLM) -> Tensor {
    let _g = tch::no_grad_guard();
    let ids = ids();
    m.forward(&ForwardInput::ids(&ids), None).unwrap()
}

fn counting(n: usize) -> mindformers::Dataset {
    let rows = (0..n).map(|i| {
        (0..9i64)
            .map(|j| (i as i64 * 3 + j) % 64)
            .collect::<Vec<i64>>()
    });
    GeneratorDataset::new(rows, &["input_ids"]).unwrap()
}

/// Captures what the trainer reports at the start.
struct Begin(Arc<Mutex<Vec<(usize, usize, usize)>>>);

impl mindformers::Callback for Begin {
    fn name(&self) -> &str {
        "begin"
    }
    fn on_train_begin(&mut self, b: &mindformers::trainer::TrainBegin) -> mindformers::Result<()> {
        self.0.lock().unwrap().push((
            b.trainable_parameters,
            b.total_parameters,
            b.optimizer_state_bytes,
        ));
        Ok(())
    }
}

fn args(out: &Path) -> TrainingArguments {
    TrainingArguments {
        output_dir: out.display().to_string(),
        max_steps: Some(30),
        batch_size: Some(4),
        learning_rate: 1e-2,
        warmup_steps: Some(0),
        logging_steps: 10,
        save_steps: 30,
        sink_mode: false,
        ..Default::default()
    }
}

#[test]
fn lora_finetune_trains_only_adapters_and_round_trips() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_gpt2(0);
    let before = logits(&model);
    let base: Vec<Tensor> = model.parameters().iter().map(|(_, t)| t.copy()).collect();
    let cfg = LoraConfig::new(4, 8.0, &["c_attn", "c_proj"]);
    let summary = lora::apply_lora(&mut model, &cfg).unwrap();
    // c_attn 32->96 and attn.c_proj, mlp.c_proj (32->32, 128->32) per layer, 2 layers.
    let per_layer = 4 * (32 + 96) + 4 * (32 + 32) + 4 * (128 + 32);
    assert_eq!(summary.adapted_layers, 6);
    assert_eq!(summary.trainable_parameters, 2 * per_layer);
    assert!(
        max_abs_diff(&logits(&model), &before) == 0.0,
        "B = 0: no change at first"
    );

    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut t = Trainer::new(
        "text_generation",
        Box::new(model),
        args(&dir.path().join("lora")),
    )
    .unwrap()
    .train_dataset(counting(64))
    .unwrap()
    .callback(Begin(seen.clone()));
    let out = t.train().unwrap();
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&out.step_losses[..5]), mean(&out.step_losses[25..]));
    assert!(last < first - 0.1, "loss {first} -> {last}");
    for ((n, p), b) in t.model().parameters().iter().zip(&base) {
        assert!(p.equal(b), "base weight {n} changed under LoRA");
    }
    let ckpt = out.last_checkpoint.unwrap();
    assert!(ckpt.join("adapter_model.safetensors").is_file());
    assert!(ckpt.join("adapter_config.json").is_file());

    // The same model trained fully keeps optimizer moments for every weight.
    let mut full = Trainer::new(
        "text_generation",
        Box::new(tiny_gpt2(0)),
        args(&dir.path().join("full")),
    )
    .unwrap()
    .train_dataset(counting(64))
    .unwrap()
    .callback(Begin(seen.clone()));
    full.train().unwrap();
    let seen = seen.lock().unwrap().clone();
    let (lora_trainable, total, lora_state) = seen[0];
    let (full_trainable, _, full_state) = seen[1];
    assert_eq!(lora_trainable, 2 * per_layer);
    assert_eq!(full_trainable + lora_trainable, total);
    assert_eq!(lora_state, 2 * 4 * lora_trainable);
    assert!(lora_state * 10 < full_state, "{lora_state} vs {full_state}");

    // PEFT layout: save, load into a fresh copy of the base, same logits; merge, same logits.
    let mut trained = t;
    let tuned = logits(trained.model().causal().unwrap());
    assert!(max_abs_diff(&tuned, &before) > 1e-3);
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lora_roundtrip");
    let _ = std::fs::remove_dir_all(&out_dir);
    lora::save_adapter(
        trained.model_mut().causal_mut().unwrap(),
        &out_dir.join("adapter"),
        None,
    )
    .unwrap();
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["peft_type"], "LORA");
    assert_eq!(saved["r"], 4);
    assert_eq!(
        saved["fan_in_fan_out"], true,
        "GPT-2's Conv1D stores [in, out]"
    );
    let mut fresh = tiny_gpt2(0);
    fresh.save_pretrained(&out_dir.join("base")).unwrap();
    let loaded = lora::load_adapter(&mut fresh, &out_dir.join("adapter")).unwrap();
    assert_eq!(loaded.target_modules, ["c_attn", "c_proj"]);
    assert!(max_abs_diff(&logits(&fresh), &tuned) < 1e-6);
    save_safetensors(
        out_dir.join("expected.safetensors"),
        &[
            ("input_ids".to_string(), ids()),
            ("logits".to_string(), tuned.copy()),
        ],
        None,
    )
    .unwrap();
    assert_eq!(lora::merge_lora(&mut fresh).unwrap(), 6);
    assert!(!lora::has_lora(&mut fresh));
    assert!(max_abs_diff(&logits(&fresh), &tuned) < 1e-5);
}

#[test]
fn lora_on_llama_and_bad_configs() {
    let _serial = serial();
    tch::manual_seed(1);
    let mut m = LlamaForCausalLM::new(&LlamaConfig {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: Some(64),
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        ..Default::default()
    })
    .unwrap();
    let before = logits(&m);
    let cfg: LoraConfig = serde_json::from_str(
        r#"{"lora_rank": 2, "lora_alpha": 4, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"], "inference_mode": false}"#,
    )
    .unwrap();
    let s = lora::apply_lora(&mut m, &cfg).unwrap();
    // q: 32->32, v: 32->16 (2 kv heads of 8) per layer.
    assert_eq!(s.trainable_parameters, 2 * (2 * (32 + 32) + 2 * (32 + 16)));
    assert_eq!(max_abs_diff(&logits(&m), &before), 0.0);
    let err = lora::apply_lora(&mut m, &cfg).unwrap_err().to_string();
    assert!(err.contains("already has a LoRA adapter"), "{err}");

    let mut fresh = tiny_gpt2(3);
    let bad = |json: &str, fresh: &mut GPT2LMHeadModel| {
        let cfg: LoraConfig = serde_json::from_str(json).unwrap();
        lora::apply_lora(fresh, &cfg).unwrap_err().to_string()
    };
    let e = bad(
        r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}"#,
        &mut fresh,
    );
    assert!(e.contains("c_attn") && e.contains("match no layer"), "{e}");
    let e = bad(
        r#"{"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "use_dora": true}"#,
        &mut fresh,
    );
    assert!(e.contains("use_dora"), "{e}");
    let e = bad(
        r#"{"r": 0, "lora_alpha": 8, "target_modules": ["c_attn"]}"#,
        &mut fresh,
    );
    assert!(e.contains("r >= 1"), "{e}");
    let e = lora::merge_lora(&mut fresh).unwrap_err().to_string();
    assert!(e.contains("no LoRA adapters"), "{e}");
}

#[test]
fn lora_merge_matches_adapters_in_every_family() {
    let _serial = serial();
    for (fixture, targets, layers) in [
        ("bloom_tiny", vec!["query_key_value", "dense_4h_to_h"], 4),
        ("glm_tiny", vec!["q_proj", "gate_up_proj"], 4),
        ("pangualpha_tiny", vec!["dense1", "mapping"], 0),
        ("llama_tiny_gqa", vec!["k_proj", "down_proj"], 4),
    ] {
        let dir = common::fixtures().join(fixture);
        let mut m = mindformers::AutoModel::from_pretrained(dir.to_str().unwrap()).unwrap();
        let before = logits(m.as_ref());
        let s = lora::apply_lora(m.as_mut(), &LoraConfig::new(2, 4.0, &targets)).unwrap();
        if layers > 0 {
            assert_eq!(s.adapted_layers, layers, "{fixture}");
        }
        assert_eq!(max_abs_diff(&logits(m.as_ref()), &before), 0.0, "{fixture}");
        // Random B makes the adapters matter; merging must reproduce them in the weights.
        tch::manual_seed(9);
        for (_, t) in lora::lora_parameters(m.as_mut()) {
            let _g = tch::no_grad_guard();
            t.shallow_clone().copy_(&(Tensor::randn_like(&t) * 0.05));
        }
        let adapted = logits(m.as_ref());
        assert!(max_abs_diff(&adapted, &before) > 1e-4, "{fixture}");
        lora::merge_lora(m.as_mut()).unwrap();
        assert!(
            max_abs_diff(&logits(m.as_ref()), &adapted) < 1e-4,
            "{fixture}"
        );
    }
}

#[test]
fn lora_preset_names_build_base_plus_adapters() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let t = Trainer::new("text_generation", "gpt2_lora", args(dir.path())).unwrap();
    let mut t = t;
    let params = lora::lora_parameters(t.model_mut().causal_mut().unwrap());
    // PEFT reports 294,912 trainable parameters for GPT-2 small with r=8 on c_attn.
    assert_eq!(
        params.iter().map(|(_, p)| p.numel()).sum::<usize>(),
        294_912
    );
    let p = lora::preset("llama_7b_lora").unwrap().unwrap();
    assert_eq!(p.base_model, "llama_7b");
    assert_eq!(
        p.lora.target_modules,
        ["q_proj", "k_proj", "v_proj", "o_proj"]
    );
    assert!(lora::preset("gpt2").unwrap().is_none());
}
