//! BERT-family parity against tiny random transformers models
//! (`tools/reference/make_bert_fixtures.py`): every head's outputs on a right-padded batch
//! and one row at a time (f32 within 1e-4), and the loss each head computes from labels.
mod common;

use common::{fixtures, max_abs_diff};
use mindformers::core::checkpoint::SafeTensors;
use mindformers::models::auto::load_task_model;
use mindformers::{DType, Device, ModelInputs, ModelOutput, PreTrainedModel, Task, TaskModel};
use tch::Tensor;

const TOL: f64 = 1e-4;

fn output(out: &ModelOutput, key: &str) -> Tensor {
    match key {
        "logits" => out.logits.as_ref(),
        "start_logits" => out.start_logits.as_ref(),
        "end_logits" => out.end_logits.as_ref(),
        "last_hidden_state" => out.last_hidden_state.as_ref(),
        "pooler_output" => out.pooler_output.as_ref(),
        other => panic!("unknown output {other}"),
    }
    .unwrap_or_else(|| panic!("the model returned no {key}"))
    .shallow_clone()
}

/// Batch, one-by-one and loss parity of one fixture directory.
fn check(name: &str, task: Task, outputs: &[&str]) {
    let dir = fixtures().join(name);
    let model = load_task_model(&dir.display().to_string(), task, Device::Cpu, DType::F32).unwrap();
    assert_eq!(model.task(), task);
    let ex = SafeTensors::open(dir.join("expected.safetensors")).unwrap();
    let get = |k: &str| ex.get(k).unwrap();
    let ids = get("input_ids");
    let mask = get("attention_mask");
    let tt = ex.contains("token_type_ids").then(|| get("token_type_ids"));
    let _g = tch::no_grad_guard();
    let out = model
        .forward(&ModelInputs {
            input_ids: Some(&ids),
            attention_mask: Some(&mask),
            token_type_ids: tt.as_ref(),
            ..Default::default()
        })
        .unwrap();
    for key in outputs {
        let (got, want) = (output(&out, key), get(key));
        assert_eq!(got.size(), want.size(), "{name} {key}");
        // Padded positions of per-token outputs are not meaningful; compare real tokens.
        let d = if got.dim() >= 2 && got.size()[1] == ids.size()[1] {
            let m = if got.dim() == 3 {
                mask.unsqueeze(-1)
            } else {
                mask.shallow_clone()
            };
            max_abs_diff(&(&got * &m), &(&want * &m))
        } else {
            max_abs_diff(&got, &want)
        };
        println!("{name}: batch {key} max abs diff {d:.2e}");
        assert!(d <= TOL, "{name} {key}: {d}");
    }
    for r in 0..3 {
        let rid = get(&format!("row{r}_input_ids"));
        let rtt = ex
            .contains(&format!("row{r}_token_type_ids"))
            .then(|| get(&format!("row{r}_token_type_ids")));
        let o = model
            .forward(&ModelInputs {
                input_ids: Some(&rid),
                token_type_ids: rtt.as_ref(),
                ..Default::default()
            })
            .unwrap();
        for key in outputs {
            let d = max_abs_diff(&output(&o, key), &get(&format!("row{r}_{key}")));
            assert!(d <= TOL, "{name} row {r} {key}: {d}");
            // The padded batch gives the same values as the row alone.
            let n = rid.size()[1];
            let b = output(&out, key).get(r as i64);
            let b = if b.dim() >= 1 && b.size()[0] == ids.size()[1] {
                b.narrow(0, 0, n)
            } else {
                b
            };
            let d = max_abs_diff(&b, &output(&o, key).get(0));
            assert!(
                d <= TOL,
                "{name} row {r} {key}: padded batch differs from one by one by {d}"
            );
        }
    }
    if ex.contains("loss") {
        let labels = ex.contains("labels").then(|| get("labels"));
        let sp = ex
            .contains("start_positions")
            .then(|| get("start_positions"));
        let ep = ex.contains("end_positions").then(|| get("end_positions"));
        let o = model
            .forward(&ModelInputs {
                input_ids: Some(&ids),
                attention_mask: Some(&mask),
                token_type_ids: tt.as_ref(),
                labels: labels.as_ref(),
                start_positions: sp.as_ref(),
                end_positions: ep.as_ref(),
                ..Default::default()
            })
            .unwrap();
        let got = o.loss().unwrap().double_value(&[]);
        let want = get("loss").double_value(&[0]);
        println!("{name}: loss {got:.6} vs {want:.6}");
        assert!((got - want).abs() <= 1e-5, "{name} loss {got} vs {want}");
    }
}

#[test]
fn bert_base_model() {
    check(
        "bert_tiny_base",
        Task::Base,
        &["last_hidden_state", "pooler_output"],
    );
}

#[test]
fn bert_masked_lm() {
    check("bert_tiny_mlm", Task::MaskedLM, &["logits"]);
}

#[test]
fn bert_sequence_classification() {
    check(
        "bert_tiny_seqcls",
        Task::SequenceClassification,
        &["logits"],
    );
}

#[test]
fn bert_multi_label_classification() {
    check(
        "bert_tiny_seqcls_multilabel",
        Task::SequenceClassification,
        &["logits"],
    );
}

#[test]
fn bert_token_classification() {
    check("bert_tiny_tokcls", Task::TokenClassification, &["logits"]);
}

#[test]
fn bert_question_answering() {
    check(
        "bert_tiny_qa",
        Task::QuestionAnswering,
        &["start_logits", "end_logits"],
    );
}

#[test]
fn roberta_masked_lm() {
    check("roberta_tiny_mlm", Task::MaskedLM, &["logits"]);
}

#[test]
fn roberta_sequence_classification() {
    check(
        "roberta_tiny_seqcls",
        Task::SequenceClassification,
        &["logits"],
    );
}

#[test]
fn xlm_roberta_token_classification() {
    check("xlmr_tiny_tokcls", Task::TokenClassification, &["logits"]);
}

#[test]
fn a_base_checkpoint_in_a_task_head_gets_a_new_head() {
    // bert_tiny_mlm holds no pooler or classifier: both are initialised, and named.
    let dir = fixtures().join("bert_tiny_mlm");
    let m =
        mindformers::Bert::from_dir(&dir, Task::SequenceClassification, Device::Cpu, DType::F32)
            .unwrap();
    let new = m.newly_initialised();
    for want in [
        "bert.pooler.dense.weight",
        "classifier.weight",
        "classifier.bias",
    ] {
        assert!(new.iter().any(|n| n == want), "{want} not in {new:?}");
    }
    assert!(new.iter().all(|n| !n.contains("encoder")), "{new:?}");
    // ...and a base checkpoint loads into every head.
    for task in [
        Task::MaskedLM,
        Task::TokenClassification,
        Task::QuestionAnswering,
    ] {
        load_task_model(
            &fixtures().join("bert_tiny_base").display().to_string(),
            task,
            Device::Cpu,
            DType::F32,
        )
        .unwrap();
    }
}

#[test]
fn bad_inputs_and_checkpoints_are_clear_errors() {
    let dir = fixtures().join("bert_tiny_mlm");
    let m = load_task_model(
        &dir.display().to_string(),
        Task::MaskedLM,
        Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let ids = Tensor::from_slice(&[2i64, 5000, 3]).unsqueeze(0);
    let e = m
        .forward(&ModelInputs::new(&ids, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("input_ids") && e.contains("tokenizer"), "{e}");
    let ids = Tensor::from_slice(&[2i64; 80]).unsqueeze(0);
    let e = m
        .forward(&ModelInputs::new(&ids, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("position") && e.contains("truncate"), "{e}");
    let ids = Tensor::from_slice(&[2i64, 7, 3]).unsqueeze(0);
    let mask = Tensor::from_slice(&[1i64, 1]).unsqueeze(0);
    let e = m
        .forward(&ModelInputs::new(&ids, Some(&mask)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("attention_mask"), "{e}");
    // No causal head: a clear error naming the right classes.
    let e = mindformers::AutoModelForCausalLM::from_pretrained(&dir.display().to_string())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("AutoModelForMaskedLM"), "{e}");
    // A GPT-2 directory has no masked-LM head.
    let gpt2 = fixtures().join("gpt2_tiny");
    let e = mindformers::AutoModelForMaskedLM::from_pretrained(&gpt2.display().to_string())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no masked LM head"), "{e}");
    // A mis-shaped checkpoint tensor names the tensor.
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = 40.into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let e = load_task_model(
        &tmp.path().display().to_string(),
        Task::MaskedLM,
        Device::Cpu,
        DType::F32,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("intermediate.dense.weight") && e.contains("[40, 32]"),
        "{e}"
    );
}

#[test]
fn save_pretrained_round_trips_and_loads_at_bf16() {
    let dir = fixtures().join("bert_tiny_seqcls");
    let m = load_task_model(
        &dir.display().to_string(),
        Task::SequenceClassification,
        Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    m.save_pretrained(tmp.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["id2label"]["2"], "positive");
    let again = load_task_model(
        &tmp.path().display().to_string(),
        Task::SequenceClassification,
        Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let ex = SafeTensors::open(dir.join("expected.safetensors")).unwrap();
    let ids = ex.get("row0_input_ids").unwrap();
    let _g = tch::no_grad_guard();
    let a = again.forward(&ModelInputs::new(&ids, None)).unwrap();
    assert!(max_abs_diff(a.logits().unwrap(), &ex.get("row0_logits").unwrap()) <= TOL);
    // Read straight at bf16: every parameter is bf16 and the logits stay close.
    let bf = load_task_model(
        &dir.display().to_string(),
        Task::SequenceClassification,
        Device::Cpu,
        DType::BF16,
    )
    .unwrap();
    assert!(bf
        .parameters()
        .iter()
        .all(|(_, t)| t.kind() == tch::Kind::BFloat16));
    let b = bf.forward(&ModelInputs::new(&ids, None)).unwrap();
    let d = max_abs_diff(b.logits().unwrap(), &ex.get("row0_logits").unwrap());
    assert!(d < 0.1, "bf16 logits differ by {d}");
}

/// Writes a randomly initialised classifier and its logits on a padded batch for
/// `cargo xtask test`, which loads the directory with transformers and compares.
#[test]
fn writes_a_classifier_transformers_must_reproduce() {
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp/hf_roundtrip_bert");
    let _ = std::fs::remove_dir_all(&out);
    let mut cfg = mindformers::BertConfig {
        vocab_size: 620,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 37,
        max_position_embeddings: 64,
        initializer_range: 0.3,
        ..Default::default()
    };
    cfg.set_labels(&["a".to_string(), "b".to_string(), "c".to_string()]);
    tch::manual_seed(7);
    let m = mindformers::Bert::new(&cfg, Task::SequenceClassification).unwrap();
    m.save_pretrained(&out.join("model")).unwrap();
    let ids = Tensor::from_slice(&[2i64, 100, 200, 300, 3, 0, 2, 50, 60, 3, 70, 3]).reshape([2, 6]);
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1]).reshape([2, 6]);
    let tt = Tensor::from_slice(&[0i64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]).reshape([2, 6]);
    let logits = {
        let _g = tch::no_grad_guard();
        m.forward(&ModelInputs {
            input_ids: Some(&ids),
            attention_mask: Some(&mask),
            token_type_ids: Some(&tt),
            ..Default::default()
        })
        .unwrap()
        .logits
        .unwrap()
    };
    mindformers::core::checkpoint::save_safetensors(
        out.join("expected.safetensors"),
        &[
            ("input_ids".to_string(), ids),
            ("attention_mask".to_string(), mask),
            ("token_type_ids".to_string(), tt),
            ("logits".to_string(), logits),
        ],
        None,
    )
    .unwrap();
    let again = load_task_model(
        &out.join("model").display().to_string(),
        Task::SequenceClassification,
        Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(again.id2label(), vec!["a", "b", "c"]);
}
