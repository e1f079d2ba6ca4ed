//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use mindformers::{GPT2Config, GPT2LMHeadModel, GPT2Tokenizer, PreTrainedModel};

/// The committed fixture directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A small GPT-2 config with GPT-2's real vocabulary, so the real tokenizer fits it.
pub fn small_full_vocab_config() -> GPT2Config {
    GPT2Config {
        hidden_size: 16,
        num_layers: 2,
        num_heads: 2,
        seq_length: 64,
        ..Default::default()
    }
}

/// Writes a randomly initialised small GPT-2 (HF layout, with tokenizer files) to `dir`.
pub fn write_small_gpt2(dir: &Path, seed: i64) -> GPT2LMHeadModel {
    tch::manual_seed(seed);
    let model = GPT2LMHeadModel::new(&small_full_vocab_config()).unwrap();
    model.save_pretrained(dir).unwrap();
    GPT2Tokenizer::from_pretrained("gpt2")
        .unwrap()
        .save_pretrained(dir)
        .unwrap();
    model
}

/// Max |a - b| over all elements.
pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
pub mod parity;

/// Equal JSON, floats within `tol`.
pub fn assert_close(got: &serde_json::Value, want: &serde_json::Value, tol: f64, at: &str) {
    match (got, want) {
        (serde_json::Value::Number(a), serde_json::Value::Number(b))
            if b.is_f64() || a.is_f64() =>
        {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= tol, "{at}: {a} vs {b}");
        }
        (serde_json::Value::Array(a), serde_json::Value::Array(b)) => {
            assert_eq!(
                a.len(),
                b.len(),
                "{at}: lengths differ\n got {got}\nwant {want}"
            );
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_close(x, y, tol, &format!("{at}[{i}]"));
            }
        }
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            let (mut ka, mut kb): (Vec<_>, Vec<_>) = (a.keys().collect(), b.keys().collect());
            ka.sort();
            kb.sort();
            assert_eq!(ka, kb, "{at}: keys differ");
            for k in kb {
                assert_close(&a[k], &b[k], tol, &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(got, want, "{at}"),
    }
}

/// Copies the files of `from` (one level) into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
