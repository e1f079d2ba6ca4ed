//! Parallel training on the threads backend trains to the same numbers as one device: per-step
//! losses within 1e-5 (relative) and final weights within 1e-5 of the single-device run with
//! the same global batch, for data / optimizer / tensor / sequence / pipeline parallelism,
//! micro-batch interleave and recompute, on GPT-2, LLaMA and PanGu-α. A quick subset runs by
//! default; set `MF_PARALLEL_FULL=1` (`cargo xtask test --full`) for every layout up to 4
//! ranks.
mod common;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use common::copy_dir;
use mindformers::trainer::{ParallelConfig, RecomputeConfig};
use mindformers::{
    CausalLM, GPT2Config, GPT2LMHeadModel, GeneratorDataset, LlamaConfig, LlamaForCausalLM,
    Trainer, TrainingArguments,
};
use tch::Tensor;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const STEPS: usize = 5;
const BATCH: usize = 8;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Family {
    Gpt2,
    /// Grouped-query attention (4 query, 2 kv heads), RMSNorm, SwiGLU, rotary, untied head.
    Llama,
    /// The top query layer (its own query embedding, the final LayerNorm in front of it).
    Pangu,
}

fn tiny_model(family: Family) -> Box<dyn CausalLM> {
    tch::manual_seed(7);
    if family == Family::Pangu {
        let cfg = mindformers::PanguAlphaConfig {
            vocab_size: 64,
            hidden_size: 32,
            ffn_hidden_size: 128,
            num_layers: 4,
            num_heads: 4,
            seq_length: 32,
            embedding_dropout_prob: 0.0,
            hidden_dropout_rate: 0.0,
            attention_dropout_rate: 0.0,
            ..Default::default()
        };
        return Box::new(mindformers::PanguAlphaHeadModel::new(&cfg).unwrap());
    }
    if family == Family::Llama {
        let cfg = LlamaConfig {
            vocab_size: 64,
            hidden_size: 32,
            intermediate_size: Some(64),
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            max_position_embeddings: 32,
            ..Default::default()
        };
        return Box::new(LlamaForCausalLM::new(&cfg).unwrap());
    }
    let cfg = GPT2Config {
        vocab_size: 64,
        seq_length: 32,
        hidden_size: 32,
        num_layers: 4,
        num_heads: 4,
        embedding_dropout_prob: 0.0,
        hidden_dropout_rate: 0.0,
        attention_dropout_rate: 0.0,
        ..Default::default()
    };
    Box::new(GPT2LMHeadModel::new(&cfg).unwrap())
}

/// Pseudo-random token rows (a fixed LCG), 17 tokens each.
fn dataset() -> mindformers::Dataset {
    let rows = (0..BATCH * STEPS).map(|i| {
        let mut x = 1_234_567u64 + i as u64 * 7919;
        (0..17)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((x >> 33) % 64) as i64
            })
            .collect::<Vec<i64>>()
    });
    GeneratorDataset::new(rows, &["input_ids"]).unwrap()
}

fn args(out: &Path) -> TrainingArguments {
    TrainingArguments {
        output_dir: out.display().to_string(),
        max_steps: Some(STEPS),
        batch_size: Some(BATCH),
        learning_rate: 1e-2,
        warmup_steps: Some(1),
        weight_decay: 0.01,
        use_clip_grad: true,
        max_grad_norm: 1.0,
        save_steps: 1000,
        logging_steps: 1,
        sink_mode: false,
        ..Default::default()
    }
}

struct Run {
    losses: Vec<f64>,
    weights: Vec<(String, Tensor)>,
}

fn train(family: Family, layout: Option<(ParallelConfig, RecomputeConfig)>) -> Run {
    train_with(family, layout, 1)
}

fn train_with(
    family: Family,
    layout: Option<(ParallelConfig, RecomputeConfig)>,
    accumulation: usize,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let a = TrainingArguments {
        gradient_accumulation_steps: accumulation,
        batch_size: Some(BATCH / accumulation),
        ..args(dir.path())
    };
    let mut t = Trainer::new("text_generation", tiny_model(family), a)
        .unwrap()
        .train_dataset(dataset())
        .unwrap();
    if let Some((p, r)) = layout {
        t.set_parallel_config(p).unwrap();
        t.set_recompute_config(r).unwrap();
    }
    let out = t.train().unwrap();
    let weights = t
        .model()
        .parameters()
        .into_iter()
        .map(|(n, w)| (n, w.detach().copy()))
        .collect();
    Run {
        losses: out.step_losses,
        weights,
    }
}

fn assert_same(name: &str, got: &Run, want: &Run) {
    assert_eq!(got.losses.len(), want.losses.len(), "{name}: steps");
    for (i, (a, b)) in got.losses.iter().zip(&want.losses).enumerate() {
        assert!(
            ((a - b) / b).abs() < 1e-5,
            "{name}: step {i} loss {a} vs single device {b}"
        );
    }
    for ((n, a), (m, b)) in got.weights.iter().zip(&want.weights) {
        assert_eq!(n, m);
        // A key bias gets no gradient (softmax ignores a constant added to every score of a
        // query), so its "gradient" is rounding noise, which Adam scales to steps of ~lr in
        // either direction: comparing it compares noise.
        if n.ends_with("attention.dense2.bias") {
            continue;
        }
        let d = (a - b).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{name}: '{n}' differs from single device by {d}");
    }
}

#[derive(Clone, Copy, Debug)]
struct Layout {
    dp: usize,
    mp: usize,
    pp: usize,
    sp: bool,
    interleave: usize,
    recompute: u8, // 0 none, 1 full, 2 selective
    zero: bool,
    vocab_parallel: bool,
}

impl Layout {
    fn name(&self) -> String {
        format!(
            "dp{} mp{} pp{}{}{} {}{}{}",
            self.dp,
            self.mp,
            self.pp,
            if self.sp { " sp" } else { "" },
            if self.interleave > 1 {
                " interleave2"
            } else {
                ""
            },
            ["", "recompute", "select_recompute"][self.recompute as usize],
            if self.zero { " zero1" } else { "" },
            if self.vocab_parallel {
                " vocab-parallel"
            } else {
                ""
            },
        )
    }

    fn configs(&self) -> (ParallelConfig, RecomputeConfig) {
        (
            ParallelConfig {
                data_parallel: self.dp,
                model_parallel: self.mp,
                pipeline_stage: self.pp,
                micro_batch_num: if self.pp > 1 { 2 } else { 1 },
                micro_batch_interleave_num: self.interleave,
                use_seq_parallel: self.sp,
                optimizer_shard: self.zero,
                vocab_emb_dp: !self.vocab_parallel,
                ..Default::default()
            },
            RecomputeConfig {
                recompute: self.recompute == 1,
                select_recompute: self.recompute == 2,
                ..Default::default()
            },
        )
    }
}

/// A 2-layer GPT-2 with GPT-2's dropout (0.1 on embeddings, attention and residuals).
fn dropout_model() -> Box<dyn CausalLM> {
    tch::manual_seed(7);
    let cfg = GPT2Config {
        vocab_size: 64,
        seq_length: 32,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        ..Default::default()
    };
    Box::new(GPT2LMHeadModel::new(&cfg).unwrap())
}

/// The single-device run, checked to have moved the weights (so equal weights mean equal
/// training, not no training).
fn reference(family: Family) -> Run {
    let run = train(family, None);
    let init = tiny_model(family).parameters();
    let moved = run
        .weights
        .iter()
        .zip(&init)
        .map(|((_, a), (_, b))| (a - b).abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(
        moved > 1e-3,
        "{family:?}: training did not change the weights ({moved})"
    );
    run
}

fn check(family: Family, l: Layout, reference: &Run) {
    let run = train(family, Some(l.configs()));
    assert_same(&format!("{family:?} {}", l.name()), &run, reference);
}

const BASE: Layout = Layout {
    dp: 1,
    mp: 1,
    pp: 1,
    sp: false,
    interleave: 1,
    recompute: 0,
    zero: false,
    vocab_parallel: false,
};

#[test]
fn quick_layouts_match_one_device() {
    let _s = serial();
    let reference = reference(Family::Gpt2);
    for l in [
        Layout { dp: 2, ..BASE },
        Layout {
            dp: 2,
            zero: true,
            ..BASE
        },
        Layout { mp: 2, ..BASE },
        Layout {
            mp: 2,
            sp: true,
            vocab_parallel: true,
            ..BASE
        },
        Layout { pp: 2, ..BASE },
        Layout {
            mp: 2,
            interleave: 2,
            ..BASE
        },
        Layout {
            recompute: 1,
            ..BASE
        },
        Layout {
            mp: 2,
            sp: true,
            recompute: 2,
            ..BASE
        },
        Layout {
            dp: 2,
            mp: 2,
            pp: 1,
            ..BASE
        },
    ] {
        check(Family::Gpt2, l, &reference);
    }
}

/// Recompute's communication options (`mp_comm_recompute = false` keeps a layer's
/// communication results, `recompute_slice_activation` keeps a sequence slice of its input)
/// and gradient accumulation give the same training too.
#[test]
fn recompute_options_and_accumulation_match_one_device() {
    let _s = serial();
    let reference = reference(Family::Gpt2);
    for (keep_comm, slice) in [(true, false), (false, true), (true, true)] {
        let (p, mut r) = Layout {
            mp: 2,
            recompute: 1,
            interleave: 2,
            ..BASE
        }
        .configs();
        r.mp_comm_recompute = !keep_comm;
        r.recompute_slice_activation = slice;
        let run = train(Family::Gpt2, Some((p, r)));
        assert_same(
            &format!("mp2 recompute keep_comm={keep_comm} slice={slice}"),
            &run,
            &reference,
        );
    }
    let accumulated = train_with(Family::Gpt2, None, 2);
    let (p, r) = Layout {
        dp: 2,
        pp: 2,
        ..BASE
    }
    .configs();
    let run = train_with(Family::Gpt2, Some((p, r)), 2);
    assert_same("dp2 pp2, 2 accumulation steps", &run, &accumulated);
}

#[test]
fn pangualpha_layouts_match_one_device() {
    let _s = serial();
    let reference = reference(Family::Pangu);
    for l in [
        Layout { mp: 2, ..BASE },
        Layout {
            mp: 2,
            sp: true,
            vocab_parallel: true,
            ..BASE
        },
        Layout {
            pp: 2,
            recompute: 1,
            ..BASE
        },
        Layout {
            dp: 2,
            zero: true,
            interleave: 2,
            ..BASE
        },
        Layout {
            mp: 2,
            pp: 2,
            recompute: 2,
            ..BASE
        },
    ] {
        check(Family::Pangu, l, &reference);
    }
}

#[test]
fn llama_layouts_match_one_device() {
    let _s = serial();
    let reference = reference(Family::Llama);
    for l in [
        Layout {
            dp: 2,
            zero: true,
            ..BASE
        },
        Layout {
            mp: 2,
            sp: true,
            ..BASE
        },
        Layout {
            mp: 2,
            vocab_parallel: true,
            interleave: 2,
            ..BASE
        },
        Layout {
            pp: 2,
            recompute: 1,
            ..BASE
        },
        Layout {
            mp: 2,
            pp: 2,
            recompute: 2,
            ..BASE
        },
    ] {
        check(Family::Llama, l, &reference);
    }
}

#[test]
fn full_matrix_matches_one_device() {
    if std::env::var("MF_PARALLEL_FULL").is_err() {
        eprintln!("skipped: set MF_PARALLEL_FULL=1 (cargo xtask test --full) for every layout");
        return;
    }
    let _s = serial();
    let mut n = 0;
    for family in [Family::Gpt2, Family::Llama, Family::Pangu] {
        let reference = reference(family);
        for dp in [1, 2] {
            for mp in [1, 2] {
                for pp in [1, 2] {
                    if dp * mp * pp > 4 {
                        continue;
                    }
                    for sp in [false, true] {
                        if sp && mp == 1 {
                            continue;
                        }
                        for interleave in [1, 2] {
                            for recompute in [0u8, 1, 2] {
                                for zero in [false, true] {
                                    if zero && dp == 1 {
                                        continue;
                                    }
                                    check(
                                        family,
                                        Layout {
                                            dp,
                                            mp,
                                            pp,
                                            sp,
                                            interleave,
                                            recompute,
                                            zero,
                                            vocab_parallel: mp > 1 && sp,
                                        },
                                        &reference,
                                    );
                                    n += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    eprintln!("{n} layouts match");
}

type Weights = Vec<(String, Tensor)>;

/// Trains `steps` steps of `model` in `out` (resuming from its newest checkpoint when asked)
/// under `layout` (one device when `None`), saving every 5 steps.
fn run_ckpt(
    model: Box<dyn CausalLM>,
    out: &Path,
    steps: usize,
    resume: bool,
    layout: Option<Layout>,
) -> (Vec<f64>, Weights) {
    let a = TrainingArguments {
        max_steps: Some(steps),
        save_steps: 5,
        resume_from_checkpoint: resume.then_some(mindformers::trainer::ResumeFrom::Latest(true)),
        ..args(out)
    };
    let mut t = Trainer::new("text_generation", model, a)
        .unwrap()
        .train_dataset(dataset())
        .unwrap();
    if let Some(l) = layout {
        let (p, r) = l.configs();
        t.set_parallel_config(p).unwrap();
        t.set_recompute_config(r).unwrap();
    }
    let out = t.train().unwrap();
    let w = t
        .model()
        .parameters()
        .into_iter()
        .map(|(n, w)| (n, w.detach().copy()))
        .collect();
    (out.step_losses, w)
}

const DP2_MP2_ZERO: Layout = Layout {
    dp: 2,
    mp: 2,
    zero: true,
    ..BASE
};

/// A parallel run with dropout checkpoints and resumes bit-exactly: 10 steps straight equal
/// 5 steps, a resume, and 5 more.
#[test]
fn parallel_checkpoints_resume_exactly() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let l = Some(DP2_MP2_ZERO);
    let a = dir.path().join("a");
    let (straight, w_straight) = run_ckpt(dropout_model(), &a, 10, false, l);
    // Resume from the step-5 checkpoint the straight run wrote (same schedule, same data).
    let b = dir.path().join("b");
    copy_dir(&a.join("checkpoint/step_5"), &b.join("checkpoint/step_5"));
    let (second, w_resumed) = run_ckpt(dropout_model(), &b, 10, true, l);
    assert_eq!(&straight[5..], &second[..], "resumed losses differ");
    for ((n, x), (_, y)) in w_straight.iter().zip(&w_resumed) {
        assert_eq!(x, y, "'{n}' differs after resume");
    }
}

/// A checkpoint written under one layout (its optimizer state gathered from the shards)
/// resumes under a pipeline layout and on one device, and ends where 10 single-device steps
/// end.
#[test]
fn parallel_checkpoints_resume_under_other_layouts() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let (_, want) = run_ckpt(
        tiny_model(Family::Gpt2),
        &dir.path().join("ref"),
        10,
        false,
        None,
    );
    let b = dir.path().join("b");
    run_ckpt(tiny_model(Family::Gpt2), &b, 10, false, Some(DP2_MP2_ZERO));
    for (name, l) in [
        ("pp2", Some(Layout { pp: 2, ..BASE })),
        ("one device", None),
    ] {
        let c = dir.path().join(format!("c-{name}"));
        copy_dir(&b.join("checkpoint/step_5"), &c.join("checkpoint/step_5"));
        let (losses, got) = run_ckpt(tiny_model(Family::Gpt2), &c, 10, true, l);
        assert_eq!(losses.len(), 5, "{name}");
        // 10 Adam steps amplify float reordering a little more than the 5 of the matrix; a
        // mis-sharded moment would be off by the size of an update (~1e-2).
        let mut worst = 0.0f64;
        for ((n, x), (_, y)) in got.iter().zip(&want) {
            let d = (x - y).abs().max().double_value(&[]);
            worst = worst.max(d);
            assert!(
                d < 5e-5,
                "{name}: '{n}' differs from 10 single-device steps by {d}"
            );
        }
        eprintln!("{name}: largest weight difference {worst:e}");
    }
}

/// One trainer per rank, as under `mf launch` with one process per device: each rank builds
/// its own model (with a different seed: rank 0's weights are broadcast) and trains its part
/// through `set_communicator`. Threads stand in for the processes here.
#[test]
fn one_trainer_per_rank_matches_one_device() {
    let _s = serial();
    let reference = reference(Family::Gpt2);
    let (p, r) = DP2_MP2_ZERO.configs();
    let comms = mindformers::core::comm::ThreadGroup::new(4)
        .unwrap()
        .into_comms();
    let models: Vec<GPT2LMHeadModel> = (0..4)
        .map(|rank| {
            let m = tiny_model(Family::Gpt2);
            if rank > 0 {
                tch::manual_seed(100 + rank as i64);
                for (_, w) in m.parameters() {
                    let _ = tch::no_grad(|| w.shallow_clone().normal_(0.0, 0.5));
                }
            }
            gpt2_of(m)
        })
        .collect();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .zip(models)
            .zip(&dirs)
            .map(|((comm, model), dir)| {
                let (p, r) = (p.clone(), r.clone());
                s.spawn(move || {
                    let mut t = Trainer::new("text_generation", Box::new(model), args(dir.path()))
                        .unwrap()
                        .train_dataset(dataset())
                        .unwrap();
                    t.set_parallel_config(p).unwrap();
                    t.set_recompute_config(r).unwrap();
                    t.set_communicator(Box::new(comm));
                    let out = t.train().unwrap();
                    Run {
                        losses: out.step_losses,
                        weights: t
                            .model()
                            .parameters()
                            .into_iter()
                            .map(|(n, w)| (n, w.detach().copy()))
                            .collect(),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, run) in runs.iter().enumerate() {
        assert_same(&format!("rank {rank} of 4 trainers"), run, &reference);
    }
}

/// The GPT-2 behind a boxed tiny model (rebuilt from its weights, so it can move to a thread).
fn gpt2_of(m: Box<dyn CausalLM>) -> GPT2LMHeadModel {
    let dir = tempfile::tempdir().unwrap();
    m.save_pretrained(dir.path()).unwrap();
    GPT2LMHeadModel::from_dir(dir.path()).unwrap()
}

/// With dropout, masks are a function of (seed, data position, site): recompute redraws
/// exactly the masks the first forward drew, so full and selective recompute train like no
/// recompute under the same layout.
#[test]
fn recompute_with_dropout_redraws_the_same_masks() {
    let _s = serial();
    let mut runs = Vec::new();
    for recompute in [0u8, 1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Trainer::new("text_generation", dropout_model(), args(dir.path()))
            .unwrap()
            .train_dataset(dataset())
            .unwrap();
        let (p, r) = Layout {
            mp: 2,
            recompute,
            ..BASE
        }
        .configs();
        t.set_parallel_config(p).unwrap();
        t.set_recompute_config(r).unwrap();
        runs.push(t.train().unwrap().step_losses);
    }
    assert_eq!(runs[0], runs[1], "full recompute");
    assert_eq!(runs[0], runs[2], "selective recompute");
}
