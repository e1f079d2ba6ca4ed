//! Project tasks: `cargo xtask setup | demo | test | bench | reference | codegen`.
//!
//! Setup installs libtorch from the PyPI `torch` wheel into `.venv` and links it at
//! `.libtorch`, which `.cargo/config.toml` points `LIBTORCH` at; every later cargo command then
//! builds and runs with no environment set by hand.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod codegen;
mod gpu_check;
mod packaging;

const TORCH_VERSION: &str = "2.13.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("command failed ({status}): {cmd:?}");
    }
    Ok(())
}

fn venv_python() -> PathBuf {
    root().join(".venv/bin/python")
}

fn python_ok(code: &str) -> bool {
    Command::new(venv_python())
        .args(["-c", code])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn torch_dir() -> Result<PathBuf> {
    let out = Command::new(venv_python())
        .args([
            "-c",
            "import os, torch; print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .context("running the venv's python")?;
    if !out.status.success() {
        bail!(
            "torch is not importable in .venv: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// `pip install` in the venv, without a cache: CI's disk is small and every wheel is used once.
fn pip_install() -> Command {
    let mut c = Command::new(venv_python());
    c.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-cache-dir",
    ]);
    c
}

/// Creates `.venv` with torch (and optionally the reference extra) and the `.libtorch` link.
fn setup(reference: bool) -> Result<()> {
    let root = root();
    if !venv_python().exists() {
        let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(&py)
            .args(["-m", "venv"])
            .arg(root.join(".venv")))
        .context("creating .venv (needs Python 3 with the venv module)")?;
    }
    let want = format!("import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '{TORCH_VERSION}' else 1)");
    if !python_ok(&want) {
        run(pip_install().arg(format!("torch=={TORCH_VERSION}")))?;
    }
    if reference && !python_ok("import transformers, safetensors, tiktoken, peft") {
        run(pip_install()
            .arg("-r")
            .arg(root.join("tools/reference/requirements.txt")))?;
    }
    // transformers 5.x has no question-answering pipeline: its fixtures come from 4.57.1,
    // installed beside the venv (not into it) so each script picks its version by PYTHONPATH.
    let tf4 = root.join(".venv-tf4");
    if reference && !tf4.join("transformers").is_dir() {
        run(pip_install()
            .args(["--no-deps", "--target"])
            .arg(&tf4)
            .args([
                "transformers==4.57.1",
                "huggingface-hub<1.0",
                "tokenizers>=0.22,<=0.23.0",
            ]))?;
    }
    // The torch wheel pulls in triton (0.7 GB), which only torch.compile on a GPU uses; nothing
    // here compiles, and CI's disk is small.
    if python_ok(
        "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('triton') else 1)",
    ) {
        run(Command::new(venv_python()).args([
            "-m",
            "pip",
            "uninstall",
            "--quiet",
            "--yes",
            "triton",
        ]))?;
    }
    let torch = torch_dir()?;
    let link = root.join(".libtorch");
    let current = std::fs::read_link(&link).ok();
    if current.as_deref() != Some(torch.as_path()) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&torch, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    if !link.join("lib/libtorch.so").exists() {
        bail!(
            "{} has no lib/libtorch.so; the torch wheel looks incomplete",
            link.display()
        );
    }
    // cudarc's NCCL backend dlopens `libnccl.so`; the wheel ships only `libnccl.so.2`, so link
    // it next to libtorch, a directory on every binary's rpath.
    let nccl = torch.join("../nvidia/nccl/lib/libnccl.so.2");
    let nccl_link = torch.join("lib/libnccl.so");
    if nccl.exists() && std::fs::symlink_metadata(&nccl_link).is_err() {
        std::os::unix::fs::symlink(&nccl, &nccl_link)
            .with_context(|| format!("linking {}", nccl_link.display()))?;
    }
    eprintln!("libtorch {TORCH_VERSION} ready at {}", link.display());
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// The runnable twins of the seed document's examples, in its order.
const DEMO_EXAMPLES: &[&str] = &[
    "auto_config_model",
    "gpt2_config_model",
    "gpt2_secondary_development",
    "auto_tokenizer",
    "gpt2_tokenizer",
    "auto_processor",
    "gpt2_processor",
    "gpt2_processor_custom",
    "pipeline_text_generation",
    "pipeline_custom_model",
    // Train a small GPT-2 on the shipped counting corpus, then generate from its checkpoint.
    "train_then_generate",
];

/// Whether real weights for `name` are already in the user's caches.
fn has_real_weights(name: &str, repo: &str) -> bool {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
    let mf_home = std::env::var("MF_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home.join(".cache/mindformers"));
    if mf_home.join(name).join("config.json").exists() {
        return true;
    }
    let hf = std::env::var("HF_HOME")
        .map(|h| PathBuf::from(h).join("hub"))
        .unwrap_or_else(|_| home.join(".cache/huggingface/hub"));
    let snaps = hf
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots");
    std::fs::read_dir(snaps)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().join("model.safetensors").exists())
        })
        .unwrap_or(false)
}

fn demo() -> Result<()> {
    setup(false)?;
    run(cargo().args(["build", "-p", "mindformers", "--bins", "--examples"]))?;
    let mut env: Vec<(&str, PathBuf)> = Vec::new();
    if !has_real_weights("gpt2", "openai-community/gpt2") {
        // No real weights here: stand-ins with random weights under the preset names, so every
        // from_pretrained path runs. gpt2 is full size (124M); the 13B stand-in is small.
        let home = root().join("target/demo/mf_home");
        let mf = root().join("target/debug/mf");
        for (preset, sets) in [
            ("gpt2", &[][..]),
            (
                "gpt2_13b",
                &["num_layers=2", "hidden_size=64", "num_heads=4"][..],
            ),
        ] {
            let out = home.join(preset);
            if !out.join("model.safetensors").exists() {
                let mut cmd = Command::new(&mf);
                cmd.args(["init-model", "--preset", preset, "--output"])
                    .arg(&out);
                for s in sets {
                    cmd.args(["--set", s]);
                }
                run(&mut cmd)?;
            }
        }
        eprintln!(
            "\nnote: no real GPT-2 weights in $MF_HOME or the Hugging Face cache; the demo uses randomly\n\
             initialised stand-ins in {} (generated text is random). Put real weights in\n\
             ~/.cache/mindformers/gpt2/ (config.json + model.safetensors) to see real text.",
            home.display()
        );
        env.push(("MF_HOME", home));
    }
    for ex in DEMO_EXAMPLES {
        eprintln!("\n=== example {ex} ===");
        let mut cmd = cargo();
        cmd.args(["run", "--quiet", "-p", "mindformers", "--example", ex]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        run(&mut cmd)?;
    }
    // A task beyond text generation, through a MindFormers run config: BERT tiny learns the
    // shipped sentiment set from scratch, then classifies two new sentences.
    eprintln!(
        "\n=== mf run: text classification (configs/bert/run_txtcls_bert_tiny_demo.toml) ==="
    );
    let mf = root().join("target/debug/mf");
    let out = root().join("target/demo/txtcls");
    let _ = std::fs::remove_dir_all(&out);
    let config = [
        "run",
        "--config",
        "configs/bert/run_txtcls_bert_tiny_demo.toml",
    ];
    let set_out = format!("output_dir=\"{}\"", out.display());
    run(Command::new(&mf)
        .current_dir(root())
        .args(config)
        .args(["--set", &set_out]))?;
    run(Command::new(&mf)
        .current_dir(root())
        .args(config)
        .args([
            "--set",
            &set_out,
            "--run-mode",
            "predict",
            "--load-checkpoint",
        ])
        .arg(out.join("checkpoint/step_80"))
        .args([
            "--predict-data",
            "the film was really boring , sarah said",
            "--predict-data",
            "the game was really amazing , peter said",
        ]))?;
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    setup(true)?;
    // `--full` adds the slow matrices: every parallel layout up to 4 ranks (tests/parallel.rs).
    let full = args.iter().any(|a| a == "--full");
    // Derived files first, before the long build: the preset tables and labels in a second,
    // the reference fixtures (regenerated by the venv set-up just made) in about 40 s.
    codegen::check_all(&root())?;
    let args: Vec<&String> = args.iter().filter(|a| *a != "--full").collect();
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]).args(args);
    if full {
        cmd.env("MF_PARALLEL_FULL", "1");
    }
    // Plain `cargo test` builds the examples as ordinary binaries, which tests/examples.rs runs
    // (with --all-targets they would be test harnesses instead).
    run(&mut cmd)?;
    // The GPU machine's check, rehearsed on the CPU with the binaries just built: the script
    // that gets a few lent minutes there must not be the first run of its code.
    gpu_check::main(&root(), &["--dry-run".to_string()])?;
    // The crates as another project uses them: each optional feature set compiles, every
    // crate packages with what it embeds, and two projects outside the workspace build and run.
    packaging::crates(None)?;
    // The HF round trip: the Rust test suite saved a model with save_pretrained; transformers
    // must load it and reproduce the logits the Rust model computed.
    let saved = root().join("target/tmp/hf_roundtrip");
    if !saved.join("model/config.json").exists() {
        bail!(
            "{} is missing: the hf_roundtrip test did not run",
            saved.display()
        );
    }
    run(Command::new(venv_python())
        .arg(root().join("tools/reference/check_hf_load.py"))
        .arg(saved.join("model"))
        .arg("--expected")
        .arg(saved.join("expected.safetensors")))?;
    // The LoRA round trip: PEFT must load the adapter the lora test saved and reproduce its
    // logits, before and after merge_and_unload.
    let lora = root().join("target/tmp/lora_roundtrip");
    if !lora.join("adapter/adapter_config.json").exists() {
        bail!("{} is missing: the lora test did not run", lora.display());
    }
    run(Command::new(venv_python())
        .arg(root().join("tools/reference/check_peft_adapter.py"))
        .arg(&lora))?;
    // The BERT round trip: transformers loads the classifier bert_parity saved and
    // reproduces its logits on a padded batch with token types.
    let bert = root().join("target/tmp/hf_roundtrip_bert");
    if !bert.join("model/config.json").exists() {
        bail!(
            "{} is missing: the bert_parity test did not run",
            bert.display()
        );
    }
    run(Command::new(venv_python())
        .arg(root().join("tools/reference/check_hf_load.py"))
        .arg(bert.join("model"))
        .arg("--expected")
        .arg(bert.join("expected.safetensors"))
        .args(["--auto-class", "AutoModelForSequenceClassification"]))?;
    eprintln!("all tests passed, including the transformers and PEFT round trips");
    Ok(())
}

fn json_line(cmd: &mut Command) -> Result<serde_json::Value> {
    eprintln!("+ {cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let line = text.lines().last().context("no output")?;
    Ok(serde_json::from_str(line)?)
}

/// mindformers-rs against transformers `generate` on the same machine, same threads, same run.
fn bench(args: &[String]) -> Result<()> {
    let what = args.first().map(String::as_str);
    if !matches!(
        what,
        Some("generate" | "train" | "parallel" | "encode" | "load")
    ) {
        bail!("usage: cargo xtask bench generate [--model gpt2|llama] [--bf16] [--kernels libtorch] [--threads N] | train [--bf16] [--threads N] | parallel | encode [--threads N] | load");
    }
    let threads = args
        .windows(2)
        .find(|w| w[0] == "--threads")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .to_string()
        });
    setup(true)?;
    run(cargo().args(["build", "--release", "-p", "mindformers", "--bin", "mf"]))?;
    let mf = root().join("target/release/mf");
    if what == Some("train") {
        return bench_train(&mf, &threads, args.iter().any(|a| a == "--bf16"));
    }
    if what == Some("parallel") {
        return bench_parallel(&mf);
    }
    if what == Some("encode") {
        return bench_encode(&mf, &threads);
    }
    if what == Some("load") {
        return bench_load(&mf);
    }
    // `--model llama`: a ~125M LLaMA with grouped-query attention, the same shape on both sides.
    let llama = args
        .windows(2)
        .any(|w| w[0] == "--model" && w[1] == "llama");
    let ours_model: Vec<&str> = if llama {
        vec![
            "--preset",
            "llama2_7b",
            "--set",
            "num_layers=12",
            "--set",
            "hidden_size=768",
            "--set",
            "num_heads=12",
            "--set",
            "n_kv_heads=4",
            "--set",
            "intermediate_size=2048",
            "--set",
            "seq_length=2048",
        ]
    } else {
        Vec::new()
    };
    let theirs_model: &[&str] = if llama { &["--model", "llama"] } else { &[] };
    println!(
        "model: {}",
        if llama {
            "LLaMA, 12 layers, hidden 768, 12 heads / 4 kv heads, MLP 2048, vocab 32000"
        } else {
            "GPT-2 small"
        }
    );
    // `--bf16`: both sides decode in bf16; `--kernels libtorch`: mf without its decode kernels.
    let dtype = if args.iter().any(|a| a == "--bf16") {
        "bf16"
    } else {
        "f32"
    };
    let kernels = args
        .windows(2)
        .find(|w| w[0] == "--kernels")
        .map_or("mf", |w| w[1].as_str());
    if !matches!(kernels, "mf" | "libtorch") {
        bail!("--kernels takes `mf` or `libtorch`, not `{kernels}`");
    }
    println!("{}", bench_header(&threads));
    println!("mindformers-rs small-batch matmuls, RMSNorm, rotary and decode attention: {kernels} (mf's need AVX2 and FMA, and use AVX-512 where the CPU has it; each run names what it used below the table); mf's weights and read probe on transparent huge pages where the kernel grants them, transformers with PyTorch's default allocator");
    println!("limit: weights + KV cache read per step over the 1 GiB read probe before and after the timed run; windowed: the decode steps of one more generate in windows of 16, each against the probes taken just before and after it (the read rate of these VMs moves by 1.5x within seconds)");
    println!("32-token prompts, 128 new tokens, greedy, no eos stop, {dtype}; each run is one process (1 warm-up, 1 timed generate), the two sides alternate A B A B for {DECODE_PAIRS} pairs");
    println!("| batch | mindformers-rs tok/s median (min-max) | transformers tok/s median (min-max) | ratio per pair | median ratio | limit tok/s (read GB/s median, min-max; MB/step) | mf % of limit (median per run) | mf % of limit, windowed (median, min-max of runs) | mf / HF peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut used: Vec<String> = Vec::new();
    for batch in ["1", "8"] {
        let common = [
            "--batch",
            batch,
            "--prompt-len",
            "32",
            "--new-tokens",
            "128",
            "--threads",
            &threads,
            "--repeats",
            "1",
            "--dtype",
            dtype,
        ];
        let mut pairs = Vec::new();
        for _ in 0..DECODE_PAIRS {
            let ours = json_line(
                Command::new(&mf)
                    .arg("bench-generate")
                    .args(common)
                    .args(["--kernels", kernels])
                    .args(&ours_model),
            )?;
            let theirs = json_line(
                Command::new(venv_python())
                    .arg(root().join("tools/bench/hf_generate.py"))
                    .args(common)
                    .args(theirs_model),
            )?;
            pairs.push((ours, theirs));
        }
        let col = |side: usize, k: &str| pair_column(&pairs, side, k);
        used.extend(
            pairs
                .iter()
                .filter_map(|(o, _)| o["kernels"].as_str().map(String::from)),
        );
        let (a, b) = (col(0, "tokens_per_s"), col(1, "tokens_per_s"));
        let ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y.max(1e-12)).collect();
        let limits = col(0, "limit_tokens_per_s");
        let limit = median(limits.clone());
        // Each run's fraction of its own limit: the read rate moves between runs.
        let fraction = median(
            a.iter()
                .zip(&limits)
                .map(|(t, l)| t / l.max(1e-12))
                .collect(),
        );
        let read = col(0, "read_gb_per_s");
        // Each run's median window (decode steps against the probes on either side of them).
        let windowed: Vec<f64> = pairs
            .iter()
            .map(|(o, _)| {
                let w = o["window_fractions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                100.0 * median(w.iter().filter_map(|v| v.as_f64()).collect())
            })
            .collect();
        println!(
            "| {batch} | {:.1} ({}) | {:.1} ({}) | {} | {:.2}x | {limit:.1} ({:.1}, {}; {:.0}) | {:.0}% | {:.0}% ({}) | {:.0} / {:.0} |",
            median(a.clone()),
            min_max(&a),
            median(b.clone()),
            min_max(&b),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            median(ratios.clone()),
            median(read.clone()),
            min_max(&read),
            median(col(0, "step_bytes")) / 1e6,
            100.0 * fraction,
            median(windowed.clone()),
            min_max(&windowed),
            median(col(0, "peak_rss_mb")),
            median(col(1, "peak_rss_mb")),
        );
    }
    used.sort();
    used.dedup();
    println!("mindformers-rs ran with: {}", used.join(", "));
    Ok(())
}

/// Step time and memory of each parallel layout on the threads backend against one device.
/// Speed: GPT-2 (8 layers, hidden 256, 8 heads, vocab 8192), global batch 8 x 256 tokens, one
/// intra-op thread per rank, so a two-rank layout uses the machine's two cores and one device
/// one core; the pipeline bubble is then `p · T_pp / T_1 - 1`. Memory: the same model with
/// 1024-token rows and vocab 1024, where activations dominate. Dropout is 0 in both (attention
/// dropout makes the runtime use explicit attention scores instead of the fused kernel).
fn bench_parallel(mf: &Path) -> Result<()> {
    let no_dropout = [
        "--set",
        "attention_dropout_rate=0",
        "--set",
        "hidden_dropout_rate=0",
        "--set",
        "embedding_dropout_prob=0",
    ];
    // Both tables train the same 8-layer model on 8 rows with one warm-up step; `shape`
    // sets vocabulary, sequence length, timed steps and threads.
    let run_layout = |shape: &[&str], flags: &[&str]| {
        json_line(
            Command::new(mf)
                .arg("bench-train")
                .args([
                    "--set",
                    "num_layers=8",
                    "--set",
                    "hidden_size=256",
                    "--set",
                    "num_heads=8",
                    "--batch",
                    "8",
                    "--warmup",
                    "1",
                ])
                .args(no_dropout)
                .args(shape)
                .args(flags),
        )
    };
    let layouts: &[(&str, &[&str])] = &[
        ("1 device (plain loop)", &[]),
        ("1 device (parallel runtime)", &["--parallel-runtime"]),
        ("dp2", &["--data-parallel", "2"]),
        (
            "dp2 + optimizer shard",
            &["--data-parallel", "2", "--optimizer-shard"],
        ),
        ("mp2", &["--model-parallel", "2"]),
        (
            "mp2 + seq parallel + vocab parallel",
            &[
                "--model-parallel",
                "2",
                "--seq-parallel",
                "--vocab-parallel",
            ],
        ),
        (
            "mp2 + interleave 2",
            &["--model-parallel", "2", "--micro-batch-interleave-num", "2"],
        ),
        (
            "pp2, m=2",
            &["--pipeline-stage", "2", "--micro-batch-num", "2"],
        ),
        (
            "pp2, m=4",
            &["--pipeline-stage", "2", "--micro-batch-num", "4"],
        ),
        (
            "pp2, m=8",
            &["--pipeline-stage", "2", "--micro-batch-num", "8"],
        ),
        (
            "dp2 mp2 (4 ranks on 2 cores)",
            &["--data-parallel", "2", "--model-parallel", "2"],
        ),
    ];
    println!("speed: GPT-2, 8 layers, hidden 256, 8 heads, vocab 8192; batch 8 x 256 tokens; f32; dropout 0; 1 intra-op thread per rank");
    println!("| layout | ranks | step s | tokens/s | vs 1 device | optimizer state per rank MiB |");
    println!("|---|---|---|---|---|---|");
    let mut single = 0.0;
    let mut pp_times = Vec::new();
    for (name, flags) in layouts {
        let v = run_layout(
            &[
                "--set",
                "vocab_size=8192",
                "--seq-length",
                "256",
                "--steps",
                "4",
                "--threads",
                "1",
            ],
            flags,
        )?;
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        let step = 1.0 / f("steps_per_s");
        if single == 0.0 {
            single = step;
        }
        if name.starts_with("pp2") {
            pp_times.push((name.to_string(), step));
        }
        println!(
            "| {name} | {} | {step:.3} | {:.0} | {:.2}x | {:.1} |",
            f("ranks"),
            f("tokens_per_s"),
            single / step,
            f("optimizer_state_bytes_rank0") / (1024.0 * 1024.0)
        );
    }
    println!("\n| pipeline | measured bubble 2·T_pp/T_1 - 1 | (p-1)/m |\n|---|---|---|");
    for (name, t) in pp_times {
        let m: f64 = name
            .rsplit('=')
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(1.0);
        println!(
            "| {name} | {:.2} | {:.2} |",
            2.0 * t / single - 1.0,
            1.0 / m
        );
    }
    let memory: &[(&str, &[&str])] = &[
        ("1 device (plain loop)", &[]),
        ("1 device (parallel runtime)", &["--parallel-runtime"]),
        ("1 device, recompute", &["--recompute", "full"]),
        ("1 device, select_recompute", &["--recompute", "selective"]),
        ("mp2", &["--model-parallel", "2"]),
        (
            "mp2 + seq parallel",
            &["--model-parallel", "2", "--seq-parallel"],
        ),
        (
            "mp2 + seq parallel + recompute",
            &[
                "--model-parallel",
                "2",
                "--seq-parallel",
                "--recompute",
                "full",
            ],
        ),
    ];
    println!("\nmemory: the same model with vocab 1024; batch 8 x 1024 tokens; peak RSS of the process (all ranks)");
    println!("| layout | peak RSS MiB | vs runtime on 1 device | step s |\n|---|---|---|---|");
    let mut base = 0.0;
    for (name, flags) in memory {
        let v = run_layout(
            &[
                "--set",
                "vocab_size=1024",
                "--set",
                "seq_length=1024",
                "--seq-length",
                "1024",
                "--steps",
                "1",
                "--threads",
                "2",
            ],
            flags,
        )?;
        let rss = v["peak_rss_mb"].as_f64().unwrap_or(0.0);
        if name.contains("parallel runtime") {
            base = rss;
        }
        let rel = if base > 0.0 {
            format!("{:+.0}", rss - base)
        } else {
            "-".into()
        };
        println!(
            "| {name} | {rss:.0} | {rel} | {:.2} |",
            1.0 / v["steps_per_s"].as_f64().unwrap_or(1.0)
        );
    }
    Ok(())
}

/// Alternating pairs of the training benchmark.
const TRAIN_PAIRS: usize = 3;

/// Alternating pairs per decode benchmark row.
const DECODE_PAIRS: usize = 5;

/// Field `k` of one side (0: mindformers-rs, 1: the baseline) of alternating runs.
fn pair_column(pairs: &[(serde_json::Value, serde_json::Value)], side: usize, k: &str) -> Vec<f64> {
    pairs
        .iter()
        .map(|(a, b)| (if side == 0 { a } else { b })[k].as_f64().unwrap_or(0.0))
        .collect()
}

/// `min-max` of some measurements, for the tables.
fn min_max(v: &[f64]) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    format!("{lo:.1}-{hi:.1}")
}

/// The median of some measurements.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The CPU's model name, for the report.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Loading a bf16 LLaMA-shaped checkpoint as a causal LM at bf16 on the CPU: `mf bench-load`
/// against transformers' `AutoModelForCausalLM.from_pretrained(dir, dtype=torch.bfloat16)`,
/// alternated (ours, theirs) for 3 rounds on the same file, medians reported.
fn bench_load(mf: &Path) -> Result<()> {
    // 16 layers, width 1536, 12 heads of 128, SwiGLU 4096, vocabulary 32000, untied head.
    let shape = [
        "num_layers=16",
        "hidden_size=1536",
        "num_heads=12",
        "intermediate_size=4096",
        "vocab_size=32000",
        "tie_word_embeddings=false",
    ];
    let dir = root().join("target/bench-load/llama-1536x16-bf16");
    if !dir.join("model.safetensors").exists() {
        let mut init = Command::new(mf);
        init.args(["init-model", "--preset", "llama2_7b", "--dtype", "bf16"]);
        for s in shape {
            init.args(["--set", s]);
        }
        run(init.arg("--output").arg(&dir))?;
    }
    let bytes = std::fs::metadata(dir.join("model.safetensors"))
        .context("the bench checkpoint")?
        .len() as f64;
    let ckpt_mib = bytes / (1024.0 * 1024.0);
    let dir_s = dir.display().to_string();
    let args = ["--model", dir_s.as_str(), "--dtype", "bf16"];
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        ours.push(json_line(Command::new(mf).arg("bench-load").args(args))?);
        theirs.push(json_line(
            Command::new(venv_python())
                .arg(root().join("tools/bench/hf_load.py"))
                .args(args),
        )?);
    }
    let col = |runs: &[serde_json::Value], k: &str| -> Vec<f64> {
        runs.iter().map(|v| v[k].as_f64().unwrap_or(0.0)).collect()
    };
    // Both processes map libtorch and its CUDA libraries before loading anything.
    let growth = |runs: &[serde_json::Value]| -> Vec<f64> {
        col(runs, "peak_rss_mib")
            .iter()
            .zip(col(runs, "rss_before_mib"))
            .map(|(p, b)| p - b)
            .collect()
    };
    let params = ours[0]["parameters"].as_u64().unwrap_or(0);
    println!(
        "model: LLaMA, {}; {params} parameters; bf16 checkpoint {ckpt_mib:.0} MiB",
        shape.join(", ")
    );
    println!("cpu: {}", cpu_model());
    for (name, runs) in [("mindformers-rs", &ours), ("transformers", &theirs)] {
        let fmt = |k: &str| {
            col(runs, k)
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        println!(
            "{name} rounds: load_s {} | peak_rss_mib {} | rss_before_mib {}",
            fmt("load_s"),
            fmt("peak_rss_mib"),
            fmt("rss_before_mib")
        );
    }
    let (ls, lt) = (median(col(&ours, "load_s")), median(col(&theirs, "load_s")));
    let (rs, rt) = (
        median(col(&ours, "peak_rss_mib")),
        median(col(&theirs, "peak_rss_mib")),
    );
    println!("| | mindformers-rs | transformers | ratio (mf / HF) |\n|---|---|---|---|");
    println!(
        "| load s (median of 3) | {ls:.2} | {lt:.2} | {:.2}x |",
        ls / lt
    );
    println!(
        "| peak RSS MiB (median of 3) | {rs:.0} | {rt:.0} | {:.2}x |",
        rs / rt
    );
    let (gs, gt) = (median(growth(&ours)), median(growth(&theirs)));
    println!(
        "| RSS growth while loading MiB (peak - before) | {gs:.0} | {gt:.0} | {:.2}x |",
        gs / gt
    );
    println!(
        "| growth / checkpoint size | {:.2} | {:.2} | |",
        gs / ckpt_mib,
        gt / ckpt_mib
    );
    Ok(())
}

/// The machine a benchmark ran on: CPU model, its bf16 / AMX flags, and the commit.
fn bench_header(threads: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    let has: Vec<&str> = ["avx512_bf16", "amx_bf16", "avx512f", "avx2", "fma"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "CPU: {model} (flags: {}); threads: {threads}; commit: {commit}",
        has.join(", ")
    )
}

/// A BERT-base-shaped (110M) sequence classifier, batch 32 × 128 tokens, f32, forward under
/// no_grad: mindformers-rs and transformers alternate (A B A B A B), medians and per-pair
/// ratios are reported.
fn bench_encode(mf: &Path, threads: &str) -> Result<()> {
    println!("{}", bench_header(threads));
    println!("model: BERT base (110M) sequence classifier, batch 32 x 128 tokens, f32, no_grad");
    let common = [
        "--batch",
        "32",
        "--seq-length",
        "128",
        "--repeats",
        "3",
        "--threads",
        threads,
    ];
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rss_ours, mut rss_theirs) = (0f64, 0f64);
    for _ in 0..5 {
        let a = json_line(Command::new(mf).arg("bench-encode").args(common))?;
        let b = json_line(
            Command::new(venv_python())
                .arg(root().join("tools/bench/hf_encode.py"))
                .args(common),
        )?;
        let (x, y) = (
            a["seqs_per_s"].as_f64().unwrap_or(0.0),
            b["seqs_per_s"].as_f64().unwrap_or(0.0),
        );
        ours.push(x);
        theirs.push(y);
        ratios.push(x / y.max(1e-12));
        rss_ours = rss_ours.max(a["peak_rss_mb"].as_f64().unwrap_or(0.0));
        rss_theirs = rss_theirs.max(b["peak_rss_mb"].as_f64().unwrap_or(0.0));
    }
    println!("| | mindformers-rs | transformers |\n|---|---|---|");
    println!(
        "| sequences/s (median, min-max) | {:.1} ({}) | {:.1} ({}) |",
        median(ours.clone()),
        min_max(&ours),
        median(theirs.clone()),
        min_max(&theirs)
    );
    println!(
        "| ratio per pair | {} | |",
        ratios
            .iter()
            .map(|r| format!("{r:.2}x"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| median ratio | {:.2}x | |", median(ratios.clone()));
    println!("| peak RSS MiB | {rss_ours:.0} | {rss_theirs:.0} |");
    Ok(())
}

/// Trainer throughput against PyTorch eager (HF GPT2LMHeadModel + torch.optim.AdamW).
fn bench_train(mf: &Path, threads: &str, bf16: bool) -> Result<()> {
    let precision: &[&str] = if bf16 { &["--bf16"] } else { &[] };
    println!(
        "precision: {}",
        if bf16 {
            "bf16 (mf: bf16 weights + f32 masters; PyTorch: CPU autocast)"
        } else {
            "f32"
        }
    );
    let shape = [
        "--seq-length",
        "256",
        "--batch",
        "8",
        "--steps",
        "6",
        "--warmup",
        "2",
        "--threads",
        threads,
    ];
    println!("{}", bench_header(threads));
    println!("model: GPT-2 shape, 6 layers, width 512, 8 heads, GPT-2 vocabulary; seq 256, batch 8, AdamW; each run 2 warm-up + 6 timed steps, the two sides alternate A B for {TRAIN_PAIRS} pairs");
    let mut pairs = Vec::new();
    for _ in 0..TRAIN_PAIRS {
        let ours = json_line(
            Command::new(mf)
                .arg("bench-train")
                .args([
                    "--set",
                    "num_layers=6",
                    "--set",
                    "hidden_size=512",
                    "--set",
                    "num_heads=8",
                ])
                .args(shape)
                .args(precision),
        )?;
        let theirs = json_line(
            Command::new(venv_python())
                .arg(root().join("tools/bench/hf_train.py"))
                .args(["--layers", "6", "--hidden", "512", "--heads", "8"])
                .args(shape)
                .args(precision),
        )?;
        pairs.push((ours, theirs));
    }
    let col = |side: usize, k: &str| pair_column(&pairs, side, k);
    let (a, b) = (col(0, "tokens_per_s"), col(1, "tokens_per_s"));
    let ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y.max(1e-12)).collect();
    let peak = median(col(0, "matmul_peak_gflops")) * 1e9;
    let params = median(col(0, "parameters"));
    let (ta, tb) = (median(a.clone()), median(b.clone()));
    let (ra, rb) = (median(col(0, "peak_rss_mb")), median(col(1, "peak_rss_mb")));
    println!("| | mindformers-rs | PyTorch eager |\n|---|---|---|");
    println!(
        "| tokens/s median (min-max) | {ta:.0} ({}) | {tb:.0} ({}) |",
        min_max(&a),
        min_max(&b)
    );
    println!(
        "| ratio per pair | {} | |",
        ratios
            .iter()
            .map(|r| format!("{r:.2}x"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| median ratio | {:.2}x | |", median(ratios.clone()));
    println!(
        "| peak RSS MiB (median) | {ra:.0} ({:.0}% of PyTorch's) | {rb:.0} |",
        100.0 * ra / rb.max(1e-12)
    );
    println!(
        "| MFU (6·N·tokens/s over the measured {:.0} GFLOPS matmul rate) | {:.1}% | {:.1}% |",
        peak / 1e9,
        100.0 * 6.0 * params * ta / peak.max(1.0),
        100.0 * 6.0 * params * tb / peak.max(1.0)
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("setup") => setup(args.iter().any(|a| a == "--reference")),
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("crates") => packaging::crates(args.get(1).map(String::as_str)),
        Some("codegen") => codegen::main(&root(), &args[1..]),
        Some("gpu-check") => gpu_check::main(&root(), &args[1..]),
        Some("reference") => {
            setup(true)?;
            for script in ["make_gpt2_fixtures.py", "make_tokenizer_fixtures.py"] {
                run(Command::new(venv_python())
                    .arg(root().join("tools/reference").join(script))
                    .current_dir(root()))?;
            }
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  setup [--reference]  install libtorch (torch=={TORCH_VERSION} wheel) into .venv\n  demo                 run the seed document's examples end to end\n  test [ARGS]          the whole test suite (+ transformers round trip)\n  bench generate [--model llama]  decode speed against transformers (same machine, same run)\n  bench train [--bf16] Trainer throughput against PyTorch eager\n  bench load           loading a bf16 checkpoint against transformers' from_pretrained\n  crates [features|package|external]  the crates as other projects use them: feature sets, cargo package, examples/external/\n  reference            regenerate the reference fixtures with transformers\n  codegen [--check] [--fixtures]  regenerate (or check) the files derived from others\n  gpu-check --prepare|--run|--dry-run  the CUDA check: build for the GPU machine, run there, or rehearse on the CPU"
            );
            bail!("unknown or missing command")
        }
    }
}
