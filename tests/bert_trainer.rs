//! Trainer tasks over the BERT family: each head learns a generated task to MindFormers'
//! metrics (accuracy, entity F1, SQuAD exact match), masked-LM pretraining lowers its loss,
//! a base checkpoint fine-tunes into a new head, and `labels` in a text_generation dataset
//! mask the prompt.
mod common;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use common::fixtures;
use mindformers::data::nlp;
use mindformers::data::table::{read_rows, Row};
use mindformers::{Bert, BertConfig, BertTokenizer, Task, Tokenizer, Trainer, TrainingArguments};
use serde_json::json;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn tok() -> Tokenizer {
    BertTokenizer::from_vocab(fixtures().join("bert_tiny_vocab.txt"), true).unwrap()
}

fn config(labels: &[&str]) -> BertConfig {
    let mut c = BertConfig {
        vocab_size: 620,
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 128,
        max_position_embeddings: 64,
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..Default::default()
    };
    if !labels.is_empty() {
        c.set_labels(&labels.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    }
    c
}

fn args(out: &Path, steps: usize, lr: f64) -> TrainingArguments {
    TrainingArguments {
        output_dir: out.display().to_string(),
        max_steps: Some(steps),
        per_device_train_batch_size: 16,
        per_device_eval_batch_size: 32,
        learning_rate: lr,
        warmup_steps: Some(10),
        save_steps: 100_000,
        logging_steps: 50,
        sink_mode: false,
        ..Default::default()
    }
}

/// A small deterministic generator (no global RNG involved).
struct Lcg(u64);
impl Lcg {
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        xs[(self.0 >> 33) as usize % xs.len()]
    }
}

const NAMES: &[&str] = &[
    "john", "mary", "paul", "james", "david", "peter", "anna", "sarah", "tom", "george",
];
const CITIES: &[&str] = &[
    "paris", "london", "berlin", "rome", "madrid", "tokyo", "moscow", "vienna",
];
const ORGS: &[&str] = &["google", "microsoft", "apple"];

fn row(v: serde_json::Value) -> Row {
    v.as_object().unwrap().clone()
}

fn sentiment(n: usize, seed: u64) -> Vec<Row> {
    let mut g = Lcg(seed);
    (0..n)
        .map(|i| {
            let (word, label) = if i % 2 == 0 {
                (
                    g.pick(&["great", "good", "excellent", "wonderful", "amazing"]),
                    "positive",
                )
            } else {
                (
                    g.pick(&["bad", "terrible", "awful", "boring", "poor"]),
                    "negative",
                )
            };
            let subject = g.pick(&["movie", "film", "book", "song", "game", "show"]);
            let text = format!("the {subject} was really {word} , {} said", g.pick(NAMES));
            row(json!({"text": text, "label": label}))
        })
        .collect()
}

#[test]
fn text_classification_learns_to_95_percent_accuracy() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    // The data goes through the file readers: JSONL for training, CSV for evaluation.
    let train_path = dir.path().join("train.jsonl");
    let lines: Vec<String> = sentiment(320, 1)
        .iter()
        .map(|r| serde_json::Value::Object(r.clone()).to_string())
        .collect();
    std::fs::write(&train_path, lines.join("\n")).unwrap();
    let eval_path = dir.path().join("eval.csv");
    let mut csv = String::from("text,label\n");
    for r in sentiment(64, 99) {
        csv.push_str(&format!(
            "\"{}\",{}\n",
            r["text"].as_str().unwrap(),
            r["label"].as_str().unwrap()
        ));
    }
    std::fs::write(&eval_path, csv).unwrap();
    let t = tok();
    let labels = ["negative".to_string(), "positive".to_string()];
    let train = nlp::text_classification(
        &read_rows(&train_path).unwrap(),
        &t,
        "text",
        None,
        "label",
        Some(&labels),
        32,
    )
    .unwrap();
    let eval = nlp::text_classification(
        &read_rows(&eval_path).unwrap(),
        &t,
        "text",
        None,
        "label",
        Some(&labels),
        32,
    )
    .unwrap();
    tch::manual_seed(0);
    let model = Bert::new(
        &config(&["negative", "positive"]),
        Task::SequenceClassification,
    )
    .unwrap();
    let mut trainer = Trainer::new("text_classification", model, args(dir.path(), 60, 2e-3))
        .unwrap()
        .train_dataset(train)
        .unwrap()
        .eval_dataset(eval)
        .unwrap();
    let before = trainer.evaluate().unwrap();
    let out = trainer.train().unwrap();
    let after = trainer.evaluate().unwrap();
    println!(
        "accuracy {} -> {}, eval loss {} -> {}",
        before.metrics["accuracy"], after.metrics["accuracy"], before.eval_loss, after.eval_loss
    );
    assert_eq!(out.global_step, 60);
    assert!(after.metrics["accuracy"] >= 0.95, "{:?}", after.metrics);
    assert!(after.eval_loss < before.eval_loss);
}

fn ner(n: usize, seed: u64) -> Vec<Row> {
    let mut g = Lcg(seed);
    (0..n)
        .map(|i| {
            let (tokens, tags): (Vec<&str>, Vec<&str>) = match i % 3 {
                0 => (
                    vec![g.pick(NAMES), "lives", "in", g.pick(CITIES)],
                    vec!["B-PER", "O", "O", "B-LOC"],
                ),
                1 => (
                    vec![
                        g.pick(NAMES),
                        "works",
                        "for",
                        g.pick(ORGS),
                        "in",
                        g.pick(CITIES),
                    ],
                    vec!["B-PER", "O", "O", "B-ORG", "O", "B-LOC"],
                ),
                // "new york" and "johnson": a two-word entity and a word of two pieces.
                _ => (
                    vec!["johnson", "met", g.pick(NAMES), "in", "new", "york"],
                    vec!["B-PER", "O", "B-PER", "O", "B-LOC", "I-LOC"],
                ),
            };
            row(json!({"tokens": tokens, "ner_tags": tags}))
        })
        .collect()
}

#[test]
fn token_classification_learns_entities_to_f1_0_9() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let t = tok();
    let train =
        nlp::token_classification(&ner(300, 3), &t, "tokens", "ner_tags", None, 32).unwrap();
    let labels = train.labels.clone();
    assert_eq!(labels[0], "O");
    let eval = nlp::token_classification(&ner(60, 77), &t, "tokens", "ner_tags", Some(&labels), 32)
        .unwrap();
    tch::manual_seed(0);
    let names: Vec<&str> = labels.iter().map(String::as_str).collect();
    let model = Bert::new(&config(&names), Task::TokenClassification).unwrap();
    let mut trainer = Trainer::new("token_classification", model, args(dir.path(), 80, 3e-3))
        .unwrap()
        .train_dataset(train)
        .unwrap()
        .eval_dataset(eval)
        .unwrap();
    trainer.train().unwrap();
    let m = trainer.evaluate().unwrap();
    println!("{:?}", m.metrics);
    assert!(m.metrics["f1"] >= 0.9, "{:?}", m.metrics);
    assert!(m.metrics["precision"] > 0.0 && m.metrics["recall"] > 0.0);
}

/// One sentence holds a person, a company and a city; the question word says which one is
/// the answer.
fn squad(n: usize, seed: u64) -> Vec<Row> {
    let mut g = Lcg(seed);
    (0..n)
        .map(|i| {
            let (a, org, city) = (g.pick(NAMES), g.pick(ORGS), g.pick(CITIES));
            let context = format!("in {city} , {a} works for {org} .");
            let (question, answer) = match i % 3 {
                0 => (format!("who works for {org} ?"), a),
                1 => (format!("where does {a} work ?"), city),
                _ => (format!("which company does {a} work for ?"), org),
            };
            let start = context.find(&format!(" {answer} ")).unwrap() + 1;
            row(json!({"question": question, "context": context,
                "answers": {"text": [answer], "answer_start": [start]}}))
        })
        .collect()
}

#[test]
fn question_answering_learns_to_exact_match_0_8() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let t = tok();
    let train = nlp::question_answering(&squad(400, 5), &t, 48, 16).unwrap();
    let eval = nlp::question_answering(&squad(60, 55), &t, 48, 16).unwrap();
    tch::manual_seed(0);
    let cfg = BertConfig {
        hidden_size: 128,
        intermediate_size: 256,
        ..config(&[])
    };
    let model = Bert::new(&cfg, Task::QuestionAnswering).unwrap();
    let mut trainer = Trainer::new("question_answering", model, args(dir.path(), 200, 1e-3))
        .unwrap()
        .train_dataset(train)
        .unwrap()
        .eval_dataset(eval)
        .unwrap();
    trainer.train().unwrap();
    let m = trainer.evaluate().unwrap();
    println!("{:?}", m.metrics);
    assert!(m.metrics["exact_match"] >= 0.8, "{:?}", m.metrics);
    assert!(m.metrics["f1"] >= m.metrics["exact_match"]);
}

#[test]
fn masked_lm_pretraining_lowers_the_loss_and_fine_tunes_into_a_new_head() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let t = tok();
    let texts: Vec<Row> = sentiment(200, 8)
        .into_iter()
        .map(|r| row(json!({"text": r["text"]})))
        .collect();
    let data = nlp::masked_lm(&texts, &t, "text", 32).unwrap();
    tch::manual_seed(0);
    let model = Bert::new(&config(&[]), Task::MaskedLM).unwrap();
    let mut a = args(dir.path(), 60, 2e-3);
    a.save_steps = 60;
    let mut trainer = Trainer::new("fill_mask", model, a)
        .unwrap()
        .tokenizer(t.clone())
        .train_dataset(data.clone())
        .unwrap()
        .eval_dataset(data)
        .unwrap();
    let before = trainer.evaluate().unwrap();
    let out = trainer.train().unwrap();
    let after = trainer.evaluate().unwrap();
    println!(
        "masked-LM loss {} -> {} (perplexity {})",
        before.eval_loss, after.eval_loss, after.perplexity
    );
    assert!(
        after.eval_loss < before.eval_loss - 1.0,
        "{} -> {}",
        before.eval_loss,
        after.eval_loss
    );
    assert!((after.perplexity - after.eval_loss.exp()).abs() < 1e-9);
    // The pretrained checkpoint fine-tunes into a classifier: the encoder is loaded, the
    // new head keeps its initialisation.
    let ckpt = out.last_checkpoint.unwrap();
    tch::manual_seed(1);
    let cls = Bert::new(
        &config(&["negative", "positive"]),
        Task::SequenceClassification,
    )
    .unwrap();
    let mut ft = Trainer::new(
        "text_classification",
        cls,
        args(&dir.path().join("ft"), 1, 1e-9),
    )
    .unwrap();
    let labels = ["negative".to_string(), "positive".to_string()];
    ft = ft
        .train_dataset(
            nlp::text_classification(
                &sentiment(16, 2),
                &t,
                "text",
                None,
                "label",
                Some(&labels),
                32,
            )
            .unwrap(),
        )
        .unwrap();
    ft.finetune(&ckpt).unwrap();
    let enc = |m: &mindformers::trainer::TrainModel| {
        m.parameters()
            .into_iter()
            .find(|(n, _)| n == "bert.encoder.layer.0.attention.self.query.weight")
            .unwrap()
            .1
    };
    let pre = enc(trainer.model());
    let d = (enc(ft.model()) - pre).abs().max().double_value(&[]);
    assert!(
        d < 1e-6,
        "the encoder was not loaded from the checkpoint: {d}"
    );
}

#[test]
fn a_head_that_does_not_fit_the_task_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = Bert::new(&config(&[]), Task::MaskedLM).unwrap();
    let e = Trainer::new("text_classification", model, args(dir.path(), 1, 1e-3))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("sequence classification head") && e.contains("masked LM"),
        "{e}"
    );
    let model = Bert::new(&config(&[]), Task::MaskedLM).unwrap();
    let e = Trainer::new("translation", model, args(dir.path(), 1, 1e-3))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unknown task 'translation'"), "{e}");
    // fill_mask needs the tokenizer for its mask token.
    let t = tok();
    let data = nlp::masked_lm(
        &[row(json!({"text": "john lives in paris"}))],
        &t,
        "text",
        16,
    )
    .unwrap();
    let model = Bert::new(&config(&[]), Task::MaskedLM).unwrap();
    let mut a = args(dir.path(), 1, 1e-3);
    a.per_device_train_batch_size = 1;
    let mut tr = Trainer::new("fill_mask", model, a)
        .unwrap()
        .train_dataset(data)
        .unwrap();
    let e = tr.train().unwrap_err().to_string();
    assert!(e.contains("tokenizer"), "{e}");
}

#[test]
fn text_generation_labels_mask_the_prompt() {
    use mindformers::{CausalLM, ForwardInput, GPT2Config, GPT2LMHeadModel, GeneratorDataset};
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = GPT2Config {
        vocab_size: 64,
        seq_length: 32,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        embedding_dropout_prob: 0.0,
        hidden_dropout_rate: 0.0,
        attention_dropout_rate: 0.0,
        ..Default::default()
    };
    tch::manual_seed(0);
    let model = GPT2LMHeadModel::new(&cfg).unwrap();
    // Prompt 5..10, answer 20..25; only the answer is predicted.
    let ids: Vec<i64> = (5..10).chain(20..25).collect();
    let labels: Vec<i64> = std::iter::repeat_n(-100, 5).chain(20..25).collect();
    let rows = vec![
        vec![
            mindformers::Column::Int(ids.clone()),
            mindformers::Column::Int(labels.clone())
        ];
        4
    ];
    let data = GeneratorDataset::new(rows, &["input_ids", "labels"]).unwrap();
    // The loss the head computes is the cross-entropy over the answer tokens alone.
    let x = tch::Tensor::from_slice(&ids).unsqueeze(0);
    let logits = {
        let _g = tch::no_grad_guard();
        model.forward(&ForwardInput::ids(&x), None).unwrap()
    };
    let want = logits
        .narrow(1, 4, 5)
        .reshape([-1, 64])
        .cross_entropy_for_logits(&tch::Tensor::from_slice(&labels[5..]))
        .double_value(&[]);
    let mut a = args(dir.path(), 1, 1e-12);
    a.per_device_train_batch_size = 4;
    a.warmup_steps = Some(0);
    let mut t = Trainer::new("text_generation", Box::new(model) as Box<dyn CausalLM>, a)
        .unwrap()
        .train_dataset(data.clone())
        .unwrap()
        .eval_dataset(data)
        .unwrap();
    let out = t.train().unwrap();
    assert!(
        (out.step_losses[0] - want).abs() < 1e-5,
        "{} vs {want}",
        out.step_losses[0]
    );
    // A labels column that does not fit input_ids is a clear error.
    let bad = GeneratorDataset::new(
        vec![vec![
            mindformers::Column::Int(vec![1, 2, 3]),
            mindformers::Column::Int(vec![1, 2]),
        ]],
        &["input_ids", "labels"],
    )
    .unwrap();
    tch::manual_seed(0);
    let m2 = GPT2LMHeadModel::new(&cfg).unwrap();
    let mut a = args(&dir.path().join("b"), 1, 1e-3);
    a.per_device_train_batch_size = 1;
    let mut t2 = Trainer::new("text_generation", Box::new(m2) as Box<dyn CausalLM>, a)
        .unwrap()
        .train_dataset(bad)
        .unwrap();
    let e = t2.train().unwrap_err().to_string();
    assert!(e.contains("labels"), "{e}");
}
