//! Checks one device against the CPU and the transformers fixtures; `cargo xtask gpu-check`
//! runs it (on CUDA on a GPU machine, on the CPU as its dry run) and makes the table.
//! Every check prints one JSON line: `{"check": ..., "ok": bool, ...}`; the exit status is
//! non-zero only when a check could not run at all.
//!
//! ```text
//! device_check infer --device cuda --fixture tests/fixtures/gpt2_tiny
//! device_check train --device cuda --out /tmp/dc
//! mf launch --nproc-per-node 1 -- device_check comm --device cuda
//! ```
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mindformers::core::checkpoint::SafeTensors;
use mindformers::{
    AutoModel, DType, Device, ForwardInput, GPT2Config, GPT2LMHeadModel, GeneratorDataset, Trainer,
    TrainingArguments,
};
use serde_json::json;
use tch::{Kind, Tensor};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Logits and greedy ids of a fixture on the device against transformers' CPU reference.
    Infer {
        #[arg(long)]
        device: String,
        /// A tests/fixtures model directory with expected.safetensors and expected.json.
        #[arg(long)]
        fixture: PathBuf,
    },
    /// 20 Trainer steps on the device against the CPU; bf16, fp16 and resume on the device.
    Train {
        #[arg(long)]
        device: String,
        /// Scratch directory for checkpoints.
        #[arg(long)]
        out: PathBuf,
    },
    /// The collectives of the communicator `init_context` gives this rank (run under `mf launch`).
    Comm {
        #[arg(long)]
        device: String,
        /// Put every rank on GPU 0 (LOCAL_RANK=0): can NCCL run two ranks on one GPU?
        #[arg(long)]
        same_gpu: bool,
    },
}

/// f32 logits against the reference; bf16/f16 as the CPU parity tests bound them.
const F32_TOL: f64 = 1e-4;
const HALF_REL: f64 = 0.05;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_device(tch::Device::Cpu).to_kind(Kind::Float) - b.to_kind(Kind::Float))
        .abs()
        .max()
        .double_value(&[])
}

fn infer(device: Device, dir: &Path) -> Result<()> {
    let name = dir.file_name().map_or("?".into(), |n| n.to_string_lossy());
    let expected = SafeTensors::open(dir.join("expected.safetensors"))?;
    let ids = expected.get("single_input_ids")?;
    let want = expected.get("single_logits")?;
    let scale = want.abs().max().double_value(&[]);
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json"))?)?;
    let greedy = &cases["cases"]["greedy"];
    let prompt: Vec<u32> = serde_json::from_value(greedy["prompt"].clone())
        .context("expected.json: cases.greedy.prompt")?;
    let want_ids: Vec<u32> = serde_json::from_value(greedy["output_ids"].clone())
        .context("expected.json: cases.greedy.output_ids")?;
    let new_tokens = want_ids.len() - prompt.len();
    let dir_s = dir.to_str().context("fixture path is not UTF-8")?;
    let _g = tch::no_grad_guard();
    let mut cpu_half = Vec::new();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let run = |dev: Device| -> Result<(Tensor, Vec<u32>)> {
            let m = AutoModel::from_pretrained_on(dir_s, dev, dtype)?;
            let logits = m.forward(&ForwardInput::ids(&ids.to_device(dev.to_tch()?)), None)?;
            let gen = mindformers::GenerationConfig {
                max_new_tokens: Some(new_tokens),
                eos_token_id: vec![],
                ..m.generation_config()
            };
            let out = mindformers::generate(m.as_ref(), std::slice::from_ref(&prompt), &gen, None)?;
            Ok((logits.to_device(tch::Device::Cpu), out[0].clone()))
        };
        let (logits, out_ids) = run(device)?;
        let diff = max_abs_diff(&logits, &want);
        let (ok, bound, extra) = if dtype == DType::F32 {
            (
                diff <= F32_TOL && out_ids == want_ids,
                F32_TOL,
                json!({"ids_equal_reference": out_ids == want_ids}),
            )
        } else {
            // The device's half-precision logits are held to the bound the CPU's are, and
            // compared with the CPU's own at that dtype.
            let (cpu_logits, _) = if device == Device::Cpu {
                (logits.shallow_clone(), vec![])
            } else {
                run(Device::Cpu)?
            };
            let vs_cpu = max_abs_diff(&logits, &cpu_logits);
            cpu_half.push(vs_cpu);
            (
                diff <= HALF_REL * scale,
                HALF_REL * scale,
                json!({"vs_cpu_same_dtype": vs_cpu}),
            )
        };
        println!(
            "{}",
            json!({
                "check": "infer", "fixture": name, "device": device.to_string(),
                "dtype": dtype.to_string(), "max_abs_diff": diff, "bound": bound, "ok": ok,
                "detail": extra,
            })
        );
    }
    Ok(())
}

fn tiny_gpt2(seed: i64, dropout: f64) -> Result<GPT2LMHeadModel> {
    tch::manual_seed(seed);
    let cfg = GPT2Config {
        vocab_size: 64,
        seq_length: 32,
        hidden_size: 64,
        num_layers: 2,
        num_heads: 4,
        embedding_dropout_prob: dropout,
        hidden_dropout_rate: dropout,
        attention_dropout_rate: dropout,
        ..Default::default()
    };
    Ok(GPT2LMHeadModel::new(&cfg)?)
}

fn counting(n: usize, seq: usize) -> Result<mindformers::Dataset> {
    let rows = (0..n).map(move |i| {
        (0..seq as i64)
            .map(|j| (i as i64 * 7 + j) % 64)
            .collect::<Vec<i64>>()
    });
    Ok(GeneratorDataset::new(rows, &["input_ids"])?)
}

fn train_args(out: &Path, tag: &str) -> TrainingArguments {
    TrainingArguments {
        output_dir: out.join(tag).display().to_string(),
        max_steps: Some(20),
        batch_size: Some(4),
        learning_rate: 3e-3,
        warmup_steps: Some(3),
        save_steps: 10,
        logging_steps: 20,
        use_clip_grad: true,
        sink_mode: false,
        ..Default::default()
    }
}

/// Step losses and the final named weights (on the CPU) of one training run.
type Trained = (Vec<f64>, Vec<(String, Tensor)>);

/// Trains the tiny GPT-2 (built on the CPU with `seed`, then moved) and returns the step losses
/// and the final weights on the CPU.
fn train_on(device: Device, dropout: f64, args: TrainingArguments, seed: i64) -> Result<Trained> {
    let mut model = tiny_gpt2(seed, dropout)?;
    mindformers::PreTrainedModel::to(&mut model, device, DType::F32)?;
    let mut t =
        Trainer::new("text_generation", Box::new(model), args)?.train_dataset(counting(64, 17)?)?;
    t.remove_callback("loss_monitor");
    let out = t.train()?;
    let weights = t
        .model()
        .parameters()
        .into_iter()
        .map(|(n, w)| (n, w.detach().to_device(tch::Device::Cpu)))
        .collect();
    Ok((out.step_losses, weights))
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
        .fold(0.0, f64::max)
}

fn train(device: Device, out: &Path) -> Result<()> {
    let row = |name: &str, ok: bool, detail: serde_json::Value| {
        println!(
            "{}",
            json!({"check": "train", "case": name, "device": device.to_string(), "ok": ok, "detail": detail})
        );
    };
    let (cpu, _) = train_on(Device::Cpu, 0.0, train_args(out, "cpu_f32"), 1)?;
    let (dev, _) = train_on(device, 0.0, train_args(out, "dev_f32"), 1)?;
    let rel = max_rel(&dev, &cpu);
    row(
        "f32 vs cpu",
        rel <= 1e-4 && dev.len() == 20,
        json!({"max_rel_per_step": rel, "steps": dev.len(), "first": dev[0], "last": dev[dev.len() - 1]}),
    );
    for (name, bf16, fp16) in [("bf16", true, false), ("fp16 + loss scaling", false, true)] {
        let args = TrainingArguments {
            bf16,
            fp16,
            ..train_args(out, name.split(' ').next().unwrap_or(name))
        };
        match train_on(device, 0.0, args, 1) {
            Ok((losses, _)) => {
                let rel = max_rel(&losses, &cpu);
                // Half precision follows the f32 curve loosely; it must stay finite and learn.
                let ok = losses.iter().all(|l| l.is_finite())
                    && losses[losses.len() - 1] < losses[0]
                    && rel < 0.1;
                row(
                    name,
                    ok,
                    json!({"max_rel_vs_cpu_f32": rel, "first": losses[0], "last": losses[losses.len() - 1]}),
                );
            }
            // A dtype the device refuses is a finding, not a crash of the whole check.
            Err(e) => row(name, false, json!({"error": e.to_string()})),
        }
    }
    // Resume on the device, with dropout so the device's RNG state must come back too.
    let straight_args = train_args(out, "straight");
    let (full, full_w) = train_on(device, 0.1, straight_args.clone(), 1)?;
    let ckpt = Path::new(&straight_args.output_dir).join("checkpoint/step_10");
    let resumed_args = TrainingArguments {
        output_dir: out.join("resumed").display().to_string(),
        resume_from_checkpoint: Some(mindformers::trainer::ResumeFrom::Path(
            ckpt.display().to_string(),
        )),
        ..straight_args
    };
    let (rest, rest_w) = train_on(device, 0.1, resumed_args, 99)?;
    let same_w = full_w
        .iter()
        .zip(&rest_w)
        .all(|((_, a), (_, b))| a.equal(b));
    row(
        "resume bit-exact",
        rest.as_slice() == &full[10..] && same_w,
        json!({"losses_equal": rest.as_slice() == &full[10..], "weights_equal": same_w}),
    );
    Ok(())
}

fn comm(device: Device, same_gpu: bool) -> Result<()> {
    if same_gpu {
        // The NCCL backend takes its GPU index from LOCAL_RANK; nothing else reads it.
        std::env::set_var("LOCAL_RANK", "0");
    }
    use mindformers::core::comm::{Communicator, ReduceOp};
    let target = match device {
        Device::Cpu => "cpu",
        _ => "cuda",
    };
    let cfg = mindformers::core::context::ContextConfig {
        device_target: target.into(),
        ..Default::default()
    };
    let (rank, world) = mindformers::core::context::init_context(true, &cfg, None)?;
    let backend = mindformers::core::context::current().map(|c| format!("{:?}", c.backend));
    // On the CPU the ranks are threads and no process communicator exists: run the same
    // collectives over a one-rank thread group.
    let comm: Box<dyn Communicator> = match mindformers::core::context::take_process_comm() {
        Some(c) => c,
        None => Box::new(
            mindformers::core::comm::threads::ThreadGroup::new(1)?
                .into_comms()
                .pop()
                .context("a thread group of one has one rank")?,
        ),
    };
    let dev = mindformers::core::context::current()
        .map_or(Ok(tch::Device::Cpu), |c| c.device.to_tch())?;
    let x = Tensor::arange(8, (Kind::Float, dev)) + (rank as f64);
    let w = world as f64;
    let mut results = Vec::new();
    let mut check = |name: &str, got: Result<Tensor, mindformers::MfError>, want: Tensor| {
        let (ok, detail) = match got {
            Ok(t) => {
                let d = max_abs_diff(&t, &want);
                (d == 0.0, json!({"max_abs_diff": d}))
            }
            Err(e) => (false, json!({"error": e.to_string()})),
        };
        results.push(json!({"op": name, "ok": ok, "detail": detail}));
    };
    let base = Tensor::arange(8, (Kind::Float, tch::Device::Cpu));
    // Sum over ranks r of (base + r) = world * base + world(world-1)/2.
    check(
        "all_reduce",
        comm.all_reduce(&x, ReduceOp::Sum),
        &base * w + w * (w - 1.0) / 2.0,
    );
    check("broadcast", comm.broadcast(&x, 0), base.shallow_clone());
    let gathered = Tensor::cat(&(0..world).map(|r| &base + r as f64).collect::<Vec<_>>(), 0);
    check("all_gather", comm.all_gather(&x, 0), gathered);
    if world == 1 {
        check(
            "reduce_scatter",
            comm.reduce_scatter(&x, ReduceOp::Sum, 0),
            base.shallow_clone(),
        );
    }
    let barrier = comm.barrier();
    let ok = results.iter().all(|r| r["ok"] == true) && barrier.is_ok();
    println!(
        "{}",
        json!({"check": "comm", "device": device.to_string(), "rank": rank, "world_size": world,
               "backend": backend, "ok": ok, "detail": results})
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Infer { device, fixture } => infer(device.parse()?, &fixture),
        Cmd::Train { device, out } => train(device.parse()?, &out),
        Cmd::Comm { device, same_gpu } => comm(device.parse()?, same_gpu),
    }
    .or_else(|e| bail!("device_check: {e:#}"))
}
