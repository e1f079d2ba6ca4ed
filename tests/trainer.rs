//! The Trainer: exact resume, gradient accumulation, evaluation, bad input, and the seed
//! document's TrainingArguments + GeneratorDataset snippet on tiny sizes.
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use mindformers::{
    CausalLM, GPT2Config, GPT2LMHeadModel, GeneratorDataset, Trainer, TrainingArguments,
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

fn weights(m: &dyn CausalLM) -> Vec<(String, Tensor)> {
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
    let err = t.train().unwrap_err().to_string();
    assert!(err.contains("needs the parallel runtime"), "{err}");
    t.set_parallel_config(ParallelConfig::default()).unwrap();
    t.set_recompute_config(RecomputeConfig {
        recompute: true,
        ..Default::default()
    })
    .unwrap();
    assert!(t.train().unwrap_err().to_string().contains("recompute"));
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
