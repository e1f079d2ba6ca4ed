//! Data-parallel and ZeRO-1 training of BERT heads (full replicas, `mf_trainer::replica`)
//! trains to the same numbers as one device: per-step losses within 1e-5 and final weights
//! within 1e-5, for sequence classification, token classification, masked LM (masks drawn on
//! the global batch) and question answering; checkpoints resume exactly and across layouts;
//! other layouts are a clear error.
mod common;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use common::{copy_dir, fixtures};
use mindformers::data::nlp;
use mindformers::data::table::Row;
use mindformers::data::TaskData;
use mindformers::trainer::{ParallelConfig, RecomputeConfig, ResumeFrom};
use mindformers::{Bert, BertConfig, BertTokenizer, Task, Tokenizer, Trainer, TrainingArguments};
use serde_json::json;
use tch::Tensor;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const STEPS: usize = 4;
const BATCH: usize = 8;

fn tok() -> Tokenizer {
    BertTokenizer::from_vocab(fixtures().join("bert_tiny_vocab.txt"), true).unwrap()
}

fn config(labels: &[String]) -> BertConfig {
    let mut c = BertConfig {
        vocab_size: 620,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 64,
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..Default::default()
    };
    if !labels.is_empty() {
        c.set_labels(labels);
    }
    c
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

const NAMES: &[&str] = &["john", "mary", "paul", "james", "anna", "sarah", "tom"];
const CITIES: &[&str] = &["paris", "london", "berlin", "rome", "madrid", "tokyo"];
const ORGS: &[&str] = &["google", "microsoft", "apple"];

fn row(v: serde_json::Value) -> Row {
    v.as_object().unwrap().clone()
}

/// Sentences of uneven length, so batches carry padding.
fn sentiment(n: usize) -> Vec<Row> {
    let mut g = Lcg(1);
    (0..n)
        .map(|i| {
            let (word, label) = if i % 2 == 0 {
                (g.pick(&["great", "good", "excellent"]), "positive")
            } else {
                (g.pick(&["bad", "terrible", "boring"]), "negative")
            };
            let tail = ["", " , i think", " , said my friend from paris"][i % 3];
            let text = format!("the {} was really {word}{tail}", g.pick(&["movie", "book"]));
            row(json!({"text": text, "label": label}))
        })
        .collect()
}

fn ner(n: usize) -> Vec<Row> {
    let mut g = Lcg(3);
    (0..n)
        .map(|i| {
            let (tokens, tags): (Vec<&str>, Vec<&str>) = if i % 2 == 0 {
                (
                    vec![g.pick(NAMES), "lives", "in", g.pick(CITIES)],
                    vec!["B-PER", "O", "O", "B-LOC"],
                )
            } else {
                (
                    vec![
                        g.pick(NAMES),
                        "works",
                        "for",
                        g.pick(ORGS),
                        "in",
                        "new",
                        "york",
                    ],
                    vec!["B-PER", "O", "O", "B-ORG", "O", "B-LOC", "I-LOC"],
                )
            };
            row(json!({"tokens": tokens, "ner_tags": tags}))
        })
        .collect()
}

fn squad(n: usize) -> Vec<Row> {
    let mut g = Lcg(5);
    (0..n)
        .map(|i| {
            let (a, org, city) = (g.pick(NAMES), g.pick(ORGS), g.pick(CITIES));
            let context = format!("in {city} , {a} works for {org} .");
            let (question, answer) = if i % 2 == 0 {
                (format!("who works for {org} ?"), a)
            } else {
                (format!("where does {a} work ?"), city)
            };
            let start = context.find(&format!(" {answer} ")).unwrap() + 1;
            row(json!({"question": question, "context": context,
                "answers": {"text": [answer], "answer_start": [start]}}))
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Head {
    SeqCls,
    TokCls,
    Mlm,
    Qa,
}

impl Head {
    fn task(self) -> &'static str {
        match self {
            Head::SeqCls => "text_classification",
            Head::TokCls => "token_classification",
            Head::Mlm => "fill_mask",
            Head::Qa => "question_answering",
        }
    }

    /// The training data and the model's label names.
    fn data(self) -> (TaskData, Vec<String>) {
        let t = tok();
        let n = BATCH * STEPS;
        match self {
            Head::SeqCls => {
                let labels = vec!["negative".to_string(), "positive".to_string()];
                let d = nlp::text_classification(
                    &sentiment(n),
                    &t,
                    "text",
                    None,
                    "label",
                    Some(&labels),
                    32,
                )
                .unwrap();
                (d, labels)
            }
            Head::TokCls => {
                let d =
                    nlp::token_classification(&ner(n), &t, "tokens", "ner_tags", None, 32).unwrap();
                let labels = d.labels.clone();
                (d, labels)
            }
            Head::Mlm => {
                let texts: Vec<Row> = sentiment(n)
                    .into_iter()
                    .map(|r| row(json!({"text": r["text"]})))
                    .collect();
                (nlp::masked_lm(&texts, &t, "text", 32).unwrap(), Vec::new())
            }
            Head::Qa => (
                nlp::question_answering(&squad(n), &t, 32, 16).unwrap(),
                Vec::new(),
            ),
        }
    }

    /// The same randomly initialised model every time (rank 0's weights when `seed` is 7).
    fn model(self, labels: &[String], seed: i64) -> Bert {
        tch::manual_seed(seed);
        let task = match self {
            Head::SeqCls => Task::SequenceClassification,
            Head::TokCls => Task::TokenClassification,
            Head::Mlm => Task::MaskedLM,
            Head::Qa => Task::QuestionAnswering,
        };
        Bert::new(&config(labels), task).unwrap()
    }
}

fn args(out: &Path, steps: usize) -> TrainingArguments {
    TrainingArguments {
        output_dir: out.display().to_string(),
        max_steps: Some(steps),
        batch_size: Some(BATCH),
        learning_rate: 5e-3,
        warmup_steps: Some(1),
        weight_decay: 0.01,
        use_clip_grad: true,
        // Small enough that clipping engages in some steps.
        max_grad_norm: 0.5,
        save_steps: 100_000,
        logging_steps: 1,
        sink_mode: false,
        ..Default::default()
    }
}

fn layout(dp: usize, zero: bool) -> ParallelConfig {
    ParallelConfig {
        data_parallel: dp,
        optimizer_shard: zero,
        ..Default::default()
    }
}

type Weights = Vec<(String, Tensor)>;

struct Run {
    losses: Vec<f64>,
    /// The `loss` of every line of metrics.jsonl (one per step: logging_steps = 1).
    logged: Vec<f64>,
    weights: Weights,
}

fn weights_of(t: &Trainer) -> Weights {
    t.model()
        .parameters()
        .into_iter()
        .map(|(n, w)| (n, w.detach().copy()))
        .collect()
}

fn logged_losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("loss").and_then(|x| x.as_f64()))
        .collect()
}

fn trainer(head: Head, a: TrainingArguments, parallel: Option<ParallelConfig>) -> Trainer {
    let (data, labels) = head.data();
    let mut t = Trainer::new(head.task(), head.model(&labels, 7), a)
        .unwrap()
        .tokenizer(tok())
        .train_dataset(data)
        .unwrap();
    if let Some(p) = parallel {
        t.set_parallel_config(p).unwrap();
    }
    t
}

fn train(head: Head, parallel: Option<ParallelConfig>, accumulation: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let a = TrainingArguments {
        gradient_accumulation_steps: accumulation,
        batch_size: Some(BATCH / accumulation),
        ..args(dir.path(), STEPS)
    };
    let mut t = trainer(head, a, parallel);
    let out = t.train().unwrap();
    Run {
        losses: out.step_losses,
        logged: logged_losses(dir.path()),
        weights: weights_of(&t),
    }
}

/// The largest weight difference, checked against `tol`.
fn assert_weights(name: &str, got: &Weights, want: &Weights, tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{name}: parameter count");
    let has = |p: &str| want.iter().any(|(n, _)| n == p);
    let mut worst = 0.0f64;
    for ((n, a), (m, b)) in got.iter().zip(want) {
        assert_eq!(n, m);
        // A key bias gets no gradient (softmax ignores a constant added to every score of a
        // query), so its "gradient" is rounding noise, which Adam scales to steps of ~lr in
        // either direction: comparing it compares noise. The same holds for what adds a
        // constant to every position's start / end logit: the QA bias, and the bias of the
        // last LayerNorm (it reaches the logits only through `qa_outputs`, as a constant).
        if n.ends_with("attention.self.key.bias")
            || n == "qa_outputs.bias"
            || (has("qa_outputs.bias") && n == "bert.encoder.layer.1.output.LayerNorm.bias")
        {
            continue;
        }
        let d = (a - b).abs().max().double_value(&[]);
        worst = worst.max(d);
        assert!(d < tol, "{name}: '{n}' differs from one device by {d}");
    }
    worst
}

fn assert_same(name: &str, got: &Run, want: &Run) {
    assert_eq!(got.losses.len(), want.losses.len(), "{name}: steps");
    for (i, (a, b)) in got.losses.iter().zip(&want.losses).enumerate() {
        assert!(
            (a - b).abs() < 1e-5,
            "{name}: step {i} loss {a} vs one device {b}"
        );
    }
    assert_eq!(got.logged.len(), want.logged.len(), "{name}: logged steps");
    for (i, (a, b)) in got.logged.iter().zip(&want.logged).enumerate() {
        assert!(
            (a - b).abs() < 1e-5,
            "{name}: logged loss {i} {a} vs one device {b}"
        );
    }
    let worst = assert_weights(name, &got.weights, &want.weights, 1e-5);
    let loss = got
        .losses
        .iter()
        .zip(&want.losses)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("{name}: largest weight difference {worst:.1e}, largest loss difference {loss:.1e}");
}

fn check_layouts(head: Head, layouts: &[(usize, bool)]) {
    let want = train(head, None, 1);
    assert_eq!(want.losses.len(), STEPS);
    for &(dp, zero) in layouts {
        let name = format!("{head:?} dp{dp}{}", if zero { " zero1" } else { "" });
        assert_same(&name, &train(head, Some(layout(dp, zero)), 1), &want);
    }
}

#[test]
fn sequence_classification_data_parallel_matches_one_device() {
    let _s = serial();
    check_layouts(
        Head::SeqCls,
        &[(2, false), (2, true), (3, true), (4, false), (4, true)],
    );
}

#[test]
fn token_classification_data_parallel_matches_one_device() {
    let _s = serial();
    check_layouts(Head::TokCls, &[(2, false), (2, true), (4, true)]);
}

/// Masks are drawn on the global batch before it is split, so the ranks predict exactly the
/// tokens one device predicts.
#[test]
fn masked_lm_and_question_answering_data_parallel_match_one_device() {
    let _s = serial();
    check_layouts(Head::Mlm, &[(2, true)]);
    check_layouts(Head::Qa, &[(2, false)]);
}

#[test]
fn gradient_accumulation_under_data_parallel_matches_one_device() {
    let _s = serial();
    let want = train(Head::TokCls, None, 2);
    let got = train(Head::TokCls, Some(layout(2, true)), 2);
    assert_same("TokCls dp2 zero1, 2 accumulation steps", &got, &want);
}

/// Trains `steps` steps in `out`, resuming from its newest checkpoint when asked, saving every
/// 3 steps.
fn run_ckpt(out: &Path, steps: usize, resume: bool, parallel: Option<ParallelConfig>) -> Run {
    let a = TrainingArguments {
        max_steps: Some(steps),
        save_steps: 3,
        resume_from_checkpoint: resume.then_some(ResumeFrom::Latest(true)),
        ..args(out, steps)
    };
    let mut t = trainer(Head::SeqCls, a, parallel);
    let o = t.train().unwrap();
    Run {
        losses: o.step_losses,
        logged: Vec::new(),
        weights: weights_of(&t),
    }
}

/// A ZeRO-1 run interrupted at its step-3 checkpoint and resumed ends bit-exactly where the
/// uninterrupted run ends; its checkpoint (full weights, whole optimizer state) also resumes
/// on one device, and a one-device checkpoint resumes under data parallelism.
#[test]
fn data_parallel_checkpoints_resume_exactly_and_across_layouts() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let dp = Some(layout(2, true));
    let a = dir.path().join("a");
    let straight = run_ckpt(&a, 6, false, dp.clone());
    let b = dir.path().join("b");
    copy_dir(&a.join("checkpoint/step_3"), &b.join("checkpoint/step_3"));
    let resumed = run_ckpt(&b, 6, true, dp.clone());
    assert_eq!(
        &straight.losses[3..],
        &resumed.losses[..],
        "resumed losses differ"
    );
    for ((n, x), (_, y)) in straight.weights.iter().zip(&resumed.weights) {
        assert_eq!(x, y, "'{n}' differs after resume");
    }
    let one = run_ckpt(&dir.path().join("one"), 6, false, None);
    for (name, from, parallel) in [
        ("zero1 checkpoint on one device", &a, None),
        (
            "one-device checkpoint under dp2",
            &dir.path().join("one"),
            Some(layout(2, false)),
        ),
    ] {
        let c = dir.path().join(name.replace(' ', "-"));
        copy_dir(
            &from.join("checkpoint/step_3"),
            &c.join("checkpoint/step_3"),
        );
        let r = run_ckpt(&c, 6, true, parallel);
        assert_eq!(r.losses.len(), 3, "{name}");
        for (x, y) in r.losses.iter().zip(&one.losses[3..]) {
            assert!((x - y).abs() < 1e-5, "{name}: loss {x} vs one device {y}");
        }
        let worst = assert_weights(name, &r.weights, &one.weights, 1e-5);
        eprintln!("{name}: largest weight difference {worst:.1e}");
    }
}

/// One trainer per rank, as under `mf launch` with one process per device: each rank builds
/// its own model (rank 1 with other weights: rank 0's are broadcast) and trains its rows
/// through `set_communicator`. Threads stand in for the processes here.
#[test]
fn one_trainer_per_rank_matches_one_device() {
    let _s = serial();
    let want = train(Head::SeqCls, None, 1);
    let comms = mindformers::core::comm::ThreadGroup::new(2)
        .unwrap()
        .into_comms();
    let (data, labels) = Head::SeqCls.data();
    let models: Vec<Bert> = (0..2)
        .map(|rank| Head::SeqCls.model(&labels, 7 + 93 * rank))
        .collect();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let runs: Vec<(Vec<f64>, Weights)> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .zip(models)
            .zip(&dirs)
            .map(|((comm, model), dir)| {
                let data = data.clone();
                s.spawn(move || {
                    let mut t = Trainer::new("text_classification", model, args(dir.path(), STEPS))
                        .unwrap()
                        .train_dataset(data)
                        .unwrap();
                    t.set_parallel_config(layout(2, true)).unwrap();
                    t.set_communicator(Box::new(comm));
                    let out = t.train().unwrap();
                    (out.step_losses, weights_of(&t))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, (losses, weights)) in runs.into_iter().enumerate() {
        let got = Run {
            losses,
            logged: want.logged.clone(),
            weights,
        };
        assert_same(&format!("rank {rank} of 2 trainers"), &got, &want);
    }
    // Only world rank 0 writes the shared output files.
    assert!(dirs[0].path().join("metrics.jsonl").is_file());
    assert!(!dirs[1].path().join("metrics.jsonl").exists());
}

#[test]
fn other_layouts_with_a_head_are_a_clear_error() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(ParallelConfig, RecomputeConfig, &str)> = vec![
        (
            ParallelConfig {
                model_parallel: 2,
                ..Default::default()
            },
            RecomputeConfig::default(),
            "model_parallel = 2",
        ),
        (
            ParallelConfig {
                data_parallel: 2,
                pipeline_stage: 2,
                micro_batch_num: 2,
                ..Default::default()
            },
            RecomputeConfig::default(),
            "pipeline_stage = 2",
        ),
        (
            ParallelConfig {
                data_parallel: 2,
                micro_batch_interleave_num: 2,
                ..Default::default()
            },
            RecomputeConfig::default(),
            "micro_batch_interleave_num = 2",
        ),
        (
            ParallelConfig {
                data_parallel: 2,
                use_seq_parallel: true,
                ..Default::default()
            },
            RecomputeConfig::default(),
            "use_seq_parallel",
        ),
        (
            layout(2, false),
            RecomputeConfig {
                recompute: true,
                ..Default::default()
            },
            "recompute",
        ),
    ];
    for (p, r, what) in cases {
        let mut t = trainer(Head::SeqCls, args(dir.path(), 1), None);
        t.set_parallel_config(p).unwrap();
        t.set_recompute_config(r).unwrap();
        let e = t.train().unwrap_err().to_string();
        assert!(
            e.contains(what) && e.contains("data_parallel and optimizer_shard only for bert heads"),
            "{what}: {e}"
        );
    }
    // Mixed precision stays one-device only.
    let a = TrainingArguments {
        bf16: true,
        ..args(dir.path(), 1)
    };
    let mut t = trainer(Head::SeqCls, a, Some(layout(2, false)));
    let e = t.train().unwrap_err().to_string();
    assert!(e.contains("bf16/fp16"), "{e}");
}

/// A rank that fails (here rank 1, whose rows hold a label the head does not have) stops the
/// run with its own error, not with rank 0's report that a peer left.
#[test]
fn a_failing_rank_reports_its_own_error() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let labels = vec!["O".to_string(), "B-PER".to_string()];
    let rows = (0..BATCH).map(|i| {
        let label = if i == BATCH - 1 { 9 } else { 1 };
        vec![
            mindformers::Column::Int(vec![2, 10 + i as i64, 11, 3]),
            mindformers::Column::Int(vec![-100, label, 0, -100]),
        ]
    });
    let data = mindformers::GeneratorDataset::new(rows, &["input_ids", "labels"]).unwrap();
    let model = Head::TokCls.model(&labels, 7);
    let mut t = Trainer::new("token_classification", model, args(dir.path(), 1))
        .unwrap()
        .train_dataset(data)
        .unwrap();
    t.set_parallel_config(layout(2, false)).unwrap();
    let e = t.train().unwrap_err().to_string();
    assert!(
        e.contains("data-parallel rank 1")
            && e.contains("Target 9 is out of bounds")
            && !e.contains("has left")
            && !e.contains("frame #"),
        "not rank 1's own error: {e}"
    );
    eprintln!("rank 1's error: {e}");
}
