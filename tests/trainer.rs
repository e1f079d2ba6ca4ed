//! The Trainer: exact resume, gradient accumulation, evaluation, bad input, and the seed
//! document's TrainingArguments + GeneratorDataset snippet on tiny sizes.
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use mindformers::{
    CausalLM, GPT2Config, GPT2LMHeadModel, GeneratorDataset, PreTrainedModel, Trainer,
    TrainingArguments,
};
use tch::Tensor;

/// libtorch's random generator (init, dropout) is process-global: tests that need
/// reproducible runs take turns.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny_model(seed: i64, dropout: f64) -> Box<dyn CausalLM> {
    tch::manual_seed(seed);
    let cfg = GPT2Config {
        vocab_size: 64,
        seq_length: 32,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        embedding_dropout_prob: dropout,
        hidden_dropout_rate: dropout,
        attention_dropout_rate: dropout,
        ..Default::default()
    };
    Box::new(GPT2LMHeadModel::new(&cfg).unwrap())
}

/// Counting sequences with random starts: learnable, deterministic.
fn dataset(n: usize, seq: usize) -> mindformers::Dataset {
    let rows = (0..n).map(move |i| {
        (0..seq as i64)
            .map(|j| (i as i64 * 7 + j) % 64)
            .collect::<Vec<i64>>()
    });
    GeneratorDataset::new(rows, &["input_ids"]).unwrap()
}

fn args(out: &Path) -> TrainingArguments {
    TrainingArguments {
        output_dir: out.display().to_string(),
        max_steps: Some(20),
        batch_size: Some(4),
        learning_rate: 3e-3,
        warmup_steps: Some(3),
        save_steps: 10,
        logging_steps: 5,
        weight_decay: 0.01,
        use_clip_grad: true,
        sink_mode: false,
        ..Default::default()
    }
}

fn weights(m: &mindformers::trainer::TrainModel) -> Vec<(String, Tensor)> {
    m.parameters()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

#[test]
fn resume_is_bit_exact() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let straight_dir = dir.path().join("straight");
    let mut straight = Trainer::new("text_generation", tiny_model(1, 0.1), args(&straight_dir))
        .unwrap()
        .train_dataset(dataset(64, 17))
        .unwrap();
    let full = straight.train().unwrap();
    assert_eq!(full.global_step, 20);
    assert!(
        full.step_losses[19] < full.step_losses[0],
        "loss should drop: {:?}",
        full.step_losses
    );
    let ckpt = straight_dir.join("checkpoint/step_10");
    assert!(
        ckpt.join("model.safetensors").is_file() && ckpt.join("optimizer.safetensors").is_file()
    );

    // A fresh process state: a differently initialised model resumed from step 10.
    let resumed_args = TrainingArguments {
        output_dir: dir.path().join("resumed").display().to_string(),
        resume_from_checkpoint: Some(mindformers::trainer::ResumeFrom::Path(
            ckpt.display().to_string(),
        )),
        ..args(&straight_dir)
    };
    let mut resumed = Trainer::new("text_generation", tiny_model(99, 0.1), resumed_args)
        .unwrap()
        .train_dataset(dataset(64, 17))
        .unwrap();
    let rest = resumed.train().unwrap();
    assert_eq!(
        rest.step_losses,
        full.step_losses[10..],
        "losses after resume differ"
    );
    for ((n, a), (_, b)) in weights(straight.model())
        .iter()
        .zip(weights(resumed.model()).iter())
    {
        assert!(a.equal(b), "parameter {n} differs after resume");
    }

    // `true` picks the newest complete checkpoint; an interrupted save's temp dir is ignored.
    std::fs::create_dir_all(straight_dir.join("checkpoint/.tmp-step_30-1")).unwrap();
    let latest = TrainingArguments {
        resume_from_checkpoint: Some(mindformers::trainer::ResumeFrom::Latest(true)),
        ..args(&straight_dir)
    };
    let mut again = Trainer::new("text_generation", tiny_model(5, 0.1), latest)
        .unwrap()
        .train_dataset(dataset(64, 17))
        .unwrap();
    assert_eq!(
        again.train().unwrap().step_losses.len(),
        0,
        "step 20 is the newest: nothing left to do"
    );
}

#[test]
fn gradient_accumulation_equals_a_bigger_batch() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let base = TrainingArguments {
        shuffle: false,
        max_steps: Some(6),
        save_strategy: "no".into(),
        ..args(dir.path())
    };
    let mut big = Trainer::new(
        "text_generation",
        tiny_model(3, 0.0),
        TrainingArguments {
            batch_size: Some(4),
            ..base.clone()
        },
    )
    .unwrap()
    .train_dataset(dataset(32, 9))
    .unwrap();
    let mut acc = Trainer::new(
        "text_generation",
        tiny_model(3, 0.0),
        TrainingArguments {
            batch_size: Some(2),
            gradient_accumulation_steps: 2,
            ..base
        },
    )
    .unwrap()
    .train_dataset(dataset(32, 9))
    .unwrap();
    let (a, b) = (big.train().unwrap(), acc.train().unwrap());
    for (x, y) in a.step_losses.iter().zip(&b.step_losses) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{x} vs {y}");
    }
    for ((n, p), (_, q)) in weights(big.model()).iter().zip(weights(acc.model()).iter()) {
        let d = (p - q).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{n} differs by {d}");
    }
}

#[test]
fn evaluate_reports_loss_and_perplexity() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new("text_generation", tiny_model(4, 0.0), args(dir.path()))
        .unwrap()
        .train_dataset(dataset(16, 9))
        .unwrap()
        .eval_dataset(dataset(8, 9))
        .unwrap();
    let before = t.evaluate().unwrap();
    assert!((before.perplexity - before.eval_loss.exp()).abs() < 1e-9);
    // A random 64-way model starts near ln(64).
    assert!((before.eval_loss - 64f64.ln()).abs() < 1.0, "{before:?}");
    t.train().unwrap();
    assert!(t.evaluate().unwrap().eval_loss < before.eval_loss);
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        4,
        "steps 5, 10, 15, 20 are logged: {metrics}"
    );
}

#[test]
fn seed_snippet_runs_on_tiny_sizes() {
    let _serial = serial();
    // TrainingArguments(num_train_epochs=3, batch_size=2, learning_rate=0.001, warmup_steps=1000, sink_mode=True)
    let dir = tempfile::tempdir().unwrap();
    let training_args = TrainingArguments {
        output_dir: dir.path().display().to_string(),
        num_train_epochs: 3.0,
        batch_size: Some(2),
        learning_rate: 0.001,
        warmup_steps: Some(1000),
        sink_mode: true,
        ..Default::default()
    };
    let generator = || (0..8i32).map(|i| (0..17).map(|j| (i + j) % 15).collect::<Vec<i32>>());
    let dataset = GeneratorDataset::new(generator(), &["input_ids"]).unwrap();
    let train_dataset = dataset.clone().batch(4, false).unwrap();
    let eval_dataset = dataset.batch(4, false).unwrap();
    let mut text_generation = Trainer::new("text_generation", tiny_model(0, 0.1), training_args)
        .unwrap()
        .train_dataset(train_dataset)
        .unwrap()
        .eval_dataset(eval_dataset)
        .unwrap();
    let out = text_generation.train().unwrap();
    assert_eq!(out.global_step, 6, "3 epochs of 2 batches of 4");
    assert!(out.last_checkpoint.unwrap().ends_with("checkpoint/step_6"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let err = Trainer::new("translation", tiny_model(0, 0.0), args(dir.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unknown task 'translation'"), "{err}");
    let err = Trainer::new(
        "text_generation",
        tiny_model(0, 0.0),
        TrainingArguments {
            learning_rate: -1.0,
            ..args(dir.path())
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("learning_rate"), "{err}");
    let named = GeneratorDataset::new(vec![vec![1i64, 2, 3]; 8], &["tokens"]).unwrap();
    let mut t = Trainer::new("text_generation", tiny_model(0, 0.0), args(dir.path()))
        .unwrap()
        .train_dataset(named)
        .unwrap();
    let err = t.train().unwrap_err().to_string();
    assert!(
        err.contains("no column 'input_ids'") && err.contains("tokens"),
        "{err}"
    );
    let mut t = Trainer::new("text_generation", tiny_model(0, 0.0), args(dir.path())).unwrap();
    assert!(t
        .train()
        .unwrap_err()
        .to_string()
        .contains("no train_dataset"));

    // A NaN loss stops training with an error and leaves the last good checkpoint intact.
    let good = TrainingArguments {
        max_steps: Some(10),
        save_steps: 5,
        ..args(dir.path())
    };
    Trainer::new("text_generation", tiny_model(0, 0.0), good)
        .unwrap()
        .train_dataset(dataset(64, 17))
        .unwrap()
        .train()
        .unwrap();
    let broken = tiny_model(0, 0.0);
    let _ = broken.parameters()[0].1.detach().fill_(f64::NAN);
    let mut t = Trainer::new(
        "text_generation",
        broken,
        TrainingArguments {
            max_steps: Some(20),
            save_steps: 1,
            ..args(dir.path())
        },
    )
    .unwrap()
    .train_dataset(dataset(64, 17))
    .unwrap();
    let err = t.train().unwrap_err().to_string();
    assert!(
        err.contains("loss became NaN") && err.contains("step 1"),
        "{err}"
    );
    let (step, last) = mindformers::trainer::checkpoint::list(dir.path())
        .pop()
        .unwrap();
    assert_eq!(step, 10);
    let m = GPT2LMHeadModel::from_dir(&last).unwrap();
    assert!(m
        .parameters()
        .iter()
        .all(|(_, p)| bool::try_from(p.isfinite().all()).unwrap()));
}

#[test]
fn parallel_recompute_predict_and_finetune() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let tok = mindformers::GPT2Tokenizer::from_pretrained("gpt2").unwrap();
    tch::manual_seed(0);
    let small = GPT2Config {
        hidden_size: 16,
        num_layers: 1,
        num_heads: 2,
        seq_length: 32,
        ..Default::default()
    };
    let model = Box::new(GPT2LMHeadModel::new(&small).unwrap());
    let mut t = Trainer::new(
        "text_generation",
        model,
        TrainingArguments {
            max_steps: Some(2),
            ..args(dir.path())
        },
    )
    .unwrap()
    .tokenizer(tok)
    .train_dataset(
        GeneratorDataset::new(vec![vec![40i64, 1842, 11618, 11, 780]; 8], &["input_ids"]).unwrap(),
    )
    .unwrap();
    use mindformers::trainer::{ParallelConfig, RecomputeConfig};
    // The seed's sequence-parallel example: one device, use_seq_parallel=True, trains as is.
    t.set_parallel_config(ParallelConfig {
        use_seq_parallel: true,
        ..Default::default()
    })
    .unwrap();
    let err = t
        .set_parallel_config(ParallelConfig {
            pipeline_stage: 2,
            micro_batch_num: 1,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("micro_batch_num (1) must be at least pipeline_stage (2)"),
        "{err}"
    );
    t.train().unwrap();
    let out = t
        .predict(
            &["I love Beijing, because"],
            &mindformers::GenerationOverrides {
                max_new_tokens: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(out[0].starts_with("I love Beijing, because"), "{out:?}");

    t.set_parallel_config(ParallelConfig {
        data_parallel: 4,
        model_parallel: 2,
        pipeline_stage: 2,
        micro_batch_num: 2,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(t.parallel_config().device_num(), 16);
    // The layout is checked against the model before any rank starts.
    let err = t.train().unwrap_err().to_string();
    assert!(
        err.contains("1 layers, fewer than pipeline_stage = 2"),
        "{err}"
    );
    t.set_parallel_config(ParallelConfig::default()).unwrap();
    t.set_recompute_config(RecomputeConfig {
        recompute: true,
        ..Default::default()
    })
    .unwrap();
    // Full recompute (with dropout: masks are seeded per segment) trains on.
    assert!(t.train().unwrap().step_losses.iter().all(|l| l.is_finite()));
    assert!(t
        .set_recompute_config(RecomputeConfig {
            recompute: true,
            select_recompute: true,
            ..Default::default()
        })
        .is_err());
    t.set_recompute_config(RecomputeConfig::default()).unwrap();
    let ckpt = mindformers::trainer::checkpoint::list(dir.path())
        .pop()
        .unwrap()
        .1;
    assert_eq!(t.finetune(&ckpt).unwrap().global_step, 2);
}

fn read_metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn bf16_trains_with_f32_master_weights_and_resumes_exactly() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let bf16 = |out: &Path, max_steps: usize| TrainingArguments {
        bf16: true,
        max_steps: Some(max_steps),
        save_steps: 5,
        ..args(out)
    };
    let straight_dir = dir.path().join("straight");
    let mut straight = Trainer::new(
        "text_generation",
        tiny_model(1, 0.1),
        bf16(&straight_dir, 10),
    )
    .unwrap()
    .train_dataset(dataset(16, 9))
    .unwrap();
    let full = straight.train().unwrap();
    assert!(
        full.step_losses[9] < full.step_losses[0],
        "{:?}",
        full.step_losses
    );
    // The model leaves train() in f32, holding the master weights.
    for (name, t) in straight.model().parameters() {
        assert_eq!(t.kind(), tch::Kind::Float, "{name}");
    }
    // Checkpoints hold the bf16 model (HF-loadable) plus the f32 masters with the optimizer.
    let ckpt =
        mindformers::core::checkpoint::SafeTensors::open(straight_dir.join("checkpoint/step_5"))
            .unwrap();
    assert_eq!(
        ckpt.get("transformer.h.0.mlp.c_fc.weight").unwrap().kind(),
        tch::Kind::BFloat16
    );
    // A fresh run that finds a copy of step 5 resumes from it and must replay steps 6..10.
    let resumed_dir = dir.path().join("resumed");
    let dst = resumed_dir.join("checkpoint/step_5");
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(straight_dir.join("checkpoint/step_5"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
    let mut first = Trainer::new(
        "text_generation",
        tiny_model(77, 0.1),
        TrainingArguments {
            resume_from_checkpoint: Some(mindformers::trainer::ResumeFrom::Latest(true)),
            ..bf16(&resumed_dir, 10)
        },
    )
    .unwrap()
    .train_dataset(dataset(16, 9))
    .unwrap();
    let rest = first.train().unwrap();
    assert_eq!(rest.step_losses, full.step_losses[5..].to_vec());
    for ((n, x), (_, y)) in weights(straight.model()).iter().zip(weights(first.model())) {
        assert!(x.equal(&y), "{n} differs after resume");
    }
}

#[test]
fn fp16_loss_scaling_skips_overflowing_steps_and_backs_off() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let a = TrainingArguments {
        fp16: true,
        max_steps: Some(12),
        logging_steps: 1,
        save_strategy: "no".into(),
        // 2^24 overflows these f16 gradients; each skipped step halves the scale.
        loss_scale_value: 2f64.powi(24),
        loss_scale_window: 3,
        ..args(dir.path())
    };
    let mut t = Trainer::new("text_generation", tiny_model(2, 0.0), a)
        .unwrap()
        .train_dataset(dataset(16, 9))
        .unwrap();
    let before = weights(t.model());
    let out = t.train().unwrap();
    let logs = read_metrics(dir.path());
    let scales: Vec<f64> = logs
        .iter()
        .map(|l| l["loss_scale"].as_f64().unwrap())
        .collect();
    assert!(
        scales[0] < 2f64.powi(24),
        "the first step overflowed: {scales:?}"
    );
    assert!(
        scales.windows(2).any(|w| w[1] == w[0] * 2.0),
        "after loss_scale_window good steps the scale grows: {scales:?}"
    );
    assert_eq!(out.global_step, 12);
    let after = weights(t.model());
    assert!(before
        .iter()
        .zip(&after)
        .any(|((_, x), (_, y))| !x.equal(y)));
    assert!(out.step_losses.iter().all(|l| l.is_finite()));
    assert!(
        out.step_losses[11] < out.step_losses[0],
        "{:?}",
        out.step_losses
    );
}

#[test]
fn early_stopping_metrics_plot_and_mfu() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let a = TrainingArguments {
        // A learning rate so small the evaluation loss cannot improve by the threshold.
        learning_rate: 1e-9,
        warmup_steps: Some(0),
        evaluation_strategy: "steps".into(),
        eval_steps: Some(2),
        logging_steps: 2,
        save_strategy: "no".into(),
        ..args(dir.path())
    };
    let mut t = Trainer::new("text_generation", tiny_model(3, 0.0), a)
        .unwrap()
        .train_dataset(dataset(16, 9))
        .unwrap()
        .eval_dataset(dataset(8, 9))
        .unwrap()
        .compute_metrics(mindformers::trainer::accuracy)
        .callback(mindformers::EarlyStopping::new(2).threshold(0.1));
    let out = t.train().unwrap();
    assert!(out.stopped_early);
    assert_eq!(
        out.global_step, 6,
        "evaluations at 2 (best), 4 and 6 (no gain): stop"
    );
    let logs = read_metrics(dir.path());
    let evals: Vec<_> = logs
        .iter()
        .filter(|l| l.get("eval_loss").is_some())
        .collect();
    assert_eq!(evals.len(), 3);
    let acc = evals[0]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let train: Vec<_> = logs.iter().filter(|l| l.get("mfu").is_some()).collect();
    assert!(train.iter().all(|l| l["mfu"].as_f64().unwrap() > 0.0));
    let png = std::fs::read(out.plot.unwrap()).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(t.evaluate().unwrap().metrics.contains_key("accuracy"));
}

/// Asks for a checkpoint at one chosen step.
struct SaveAt(usize);

impl mindformers::Callback for SaveAt {
    fn name(&self) -> &str {
        "save_at"
    }
    fn on_step_end(&mut self, s: &mindformers::StepInfo, c: &mut mindformers::TrainerControl) {
        c.should_save |= s.step == self.0;
    }
}

#[test]
fn callbacks_decide_saves_and_evaluation_needs_data() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new("text_generation", tiny_model(0, 0.0), args(dir.path()))
        .unwrap()
        .train_dataset(dataset(16, 9))
        .unwrap()
        .callback(SaveAt(7));
    assert_eq!(t.remove_callback("checkpoint"), 1);
    let out = t.train().unwrap();
    let saved: Vec<usize> = mindformers::trainer::checkpoint::list(dir.path())
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(saved, vec![7]);
    assert!(out.last_checkpoint.unwrap().ends_with("step_7"));
    let err = Trainer::new(
        "text_generation",
        tiny_model(0, 0.0),
        TrainingArguments {
            evaluation_strategy: "epoch".into(),
            ..args(dir.path())
        },
    )
    .unwrap()
    .train_dataset(dataset(16, 9))
    .unwrap()
    .train()
    .unwrap_err()
    .to_string();
    assert!(err.contains("eval_dataset"), "{err}");
}

#[test]
fn model_by_name_or_config_dir() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg_dir = dir.path().join("tiny");
    tiny_model(0, 0.0).save_pretrained(&cfg_dir).unwrap();
    let a = TrainingArguments {
        seed: 5,
        ..args(&dir.path().join("out"))
    };
    let by_dir = |a: &TrainingArguments| {
        Trainer::new("text_generation", cfg_dir.to_str().unwrap(), a.clone()).unwrap()
    };
    let (x, y) = (by_dir(&a), by_dir(&a));
    // Built from config.json with fresh weights from args.seed: the same twice, not the saved ones.
    let saved = GPT2LMHeadModel::from_dir(&cfg_dir).unwrap();
    for (((n, p), (_, q)), (_, s)) in weights(x.model())
        .iter()
        .zip(weights(y.model()))
        .zip(saved.parameters())
    {
        assert!(p.equal(&q), "{n}");
        if p.dim() > 1 {
            assert!(!p.equal(&s), "{n} should be freshly initialised");
        }
    }
    assert_eq!(x.model().causal().unwrap().vocab_size(), 64);
    let gpt2 = Trainer::new("text_generation", "gpt2", a.clone()).unwrap();
    assert_eq!(gpt2.model().num_parameters(), 124_439_808);
    let err = Trainer::new("text_generation", "gpt3", a)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("gpt3") && err.contains("gpt2"), "{err}");
}
