//! `cargo xtask gpu-check`: one prepared check of the CUDA paths, for the few minutes a GPU
//! machine is lent.
//!
//! - `--prepare` (here): the GPU machine has libtorch 2.11 (PyTorch 2.11) and no Rust, and
//!   tch 0.26 binds only 2.13, so a copy of the workspace pinned to tch 0.24 (which binds
//!   2.11) is built in release against the `torch==2.11.0` wheel's libtorch; `mf`,
//!   `device_check` and this xtask go into `target/gpu-check/bundle`, which is carried.
//! - `--run` (there, from the repository root): every check on `cuda`, one table printed and
//!   written to `$OUT/gpu-check.md` (raw rows in `$OUT/gpu-check.jsonl`).
//! - `--dry-run`: the same steps on the CPU with this workspace's debug binaries and tiny
//!   speed shapes; `cargo xtask test` runs it so the script cannot rot.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// The libtorch of the GPU machine's PyTorch and the tch release that binds it.
const DEVICE_TORCH: &str = "2.11.0";
const DEVICE_TCH: &str = "0.24";
/// No speed case starts after this many seconds of a run.
const SPEED_DEADLINE_S: u64 = 390;

/// What one run checks with, and where.
struct Plan {
    device: &'static str,
    root: PathBuf,
    mf: PathBuf,
    check: PathBuf,
    python: PathBuf,
    out: PathBuf,
    /// Full-size speed shapes (GPU) or tiny ones (dry run).
    full: bool,
}

/// Entry point: `--prepare`, `--run` or `--dry-run`.
pub fn main(root: &Path, args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("--prepare") => prepare(root),
        Some("--run") => {
            let here = std::env::current_dir()?;
            let bundle = std::env::current_exe()?
                .parent()
                .context("the xtask binary has a folder")?
                .to_path_buf();
            let out = std::env::var_os("OUT").map_or_else(|| bundle.join("out"), PathBuf::from);
            let plan = Plan {
                device: "cuda",
                mf: bundle.join("mf"),
                check: bundle.join("device_check"),
                python: PathBuf::from("python3"),
                out,
                full: true,
                root: here,
            };
            device_library_path(&plan.python)?;
            run_checks(&plan)
        }
        Some("--dry-run") => {
            crate::run(crate::cargo().args([
                "build",
                "-p",
                "mindformers",
                "--bin",
                "mf",
                "--example",
                "device_check",
            ]))?;
            let plan = Plan {
                device: "cpu",
                root: root.to_path_buf(),
                mf: root.join("target/debug/mf"),
                check: root.join("target/debug/examples/device_check"),
                python: crate::venv_python(),
                out: root.join("target/gpu-check/dry-run"),
                full: false,
            };
            run_checks(&plan)
        }
        _ => bail!("usage: cargo xtask gpu-check --prepare | --run | --dry-run"),
    }
}

/// Puts the GPU machine's torch and NVIDIA libraries (NCCL among them) on `LD_LIBRARY_PATH`
/// for every program started after this: the carried binaries link libtorch by name only.
fn device_library_path(python: &Path) -> Result<()> {
    let out = Command::new(python)
        .args([
            "-c",
            "import glob, os, torch; d = os.path.dirname(torch.__file__); \
             sp = os.path.dirname(d); \
             print(':'.join([os.path.join(d, 'lib')] + sorted(glob.glob(os.path.join(sp, 'nvidia', '*', 'lib')))))",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "the device's python has no torch: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut path = String::from_utf8(out.stdout)?.trim().to_string();
    if let Ok(old) = std::env::var("LD_LIBRARY_PATH") {
        path = format!("{path}:{old}");
    }
    std::env::set_var("LD_LIBRARY_PATH", path);
    Ok(())
}

/// The JSON lines a command prints (a launcher's `[rank R] ` prefix is skipped).
fn json_lines(cmd: &mut Command) -> Result<Vec<Value>> {
    eprintln!("+ {cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Value> = text
        .lines()
        .filter_map(|l| l.find('{').and_then(|i| serde_json::from_str(&l[i..]).ok()))
        .collect();
    if !out.status.success() && rows.is_empty() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            err.lines().last().unwrap_or("")
        );
    }
    Ok(rows)
}

/// One table row: the check, whether it passed, and what it measured.
struct Row {
    check: String,
    ok: bool,
    /// A finding that is neither a pass nor a failure (NCCL refusing two ranks on one GPU).
    result: Option<String>,
    detail: String,
}

fn row_of(v: &Value) -> Row {
    let name = match v["check"].as_str().unwrap_or("?") {
        "infer" => format!(
            "infer {} {}",
            v["fixture"].as_str().unwrap_or("?"),
            v["dtype"].as_str().unwrap_or("?")
        ),
        "train" => format!("train {}", v["case"].as_str().unwrap_or("?")),
        "comm" => format!(
            "comm world {} ({})",
            v["world_size"],
            v["backend"].as_str().unwrap_or("?")
        ),
        other => other.to_string(),
    };
    let mut detail = v["detail"].to_string();
    if let Some(d) = v["max_abs_diff"].as_f64() {
        detail = format!(
            "max abs diff {d:.3e} (bound {:.3e}) {detail}",
            v["bound"].as_f64().unwrap_or(0.0)
        );
    }
    Row {
        check: name,
        ok: v["ok"] == true,
        result: v["result"].as_str().map(str::to_string),
        detail,
    }
}

fn run_checks(plan: &Plan) -> Result<()> {
    let t0 = Instant::now();
    for bin in [&plan.mf, &plan.check] {
        if !bin.exists() {
            bail!(
                "{} is missing: run `cargo xtask gpu-check --prepare` (GPU) or --dry-run",
                bin.display()
            );
        }
    }
    std::fs::create_dir_all(&plan.out)?;
    let fixtures = plan.root.join("tests/fixtures");
    let mut raw: Vec<Value> = Vec::new();
    let failed = |what: &str, e: anyhow::Error| json!({"check": what, "ok": false, "detail": format!("{e:#}")});
    // 1. Inference parity on the transformers fixtures.
    for fixture in ["gpt2_tiny", "llama_tiny"] {
        match json_lines(
            Command::new(&plan.check)
                .args(["infer", "--device", plan.device, "--fixture"])
                .arg(fixtures.join(fixture)),
        ) {
            Ok(vs) => raw.extend(vs),
            Err(e) => raw.push(failed(&format!("infer {fixture}"), e)),
        }
    }
    // The `mf generate` command itself: greedy ids on the device equal transformers'.
    for fixture in ["gpt2_tiny", "llama_tiny"] {
        match cli_generate(plan, &fixtures.join(fixture)) {
            Ok(v) => raw.push(v),
            Err(e) => raw.push(failed(&format!("mf generate {fixture}"), e)),
        }
    }
    // 2. Training parity, half precision and resume.
    let scratch = plan.out.join("train-scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    match json_lines(
        Command::new(&plan.check)
            .args(["train", "--device", plan.device, "--out"])
            .arg(&scratch),
    ) {
        Ok(vs) => raw.extend(vs),
        Err(e) => raw.push(failed("train", e)),
    }
    let _ = std::fs::remove_dir_all(&scratch);
    // 3. The process communicator through the launcher (NCCL on CUDA).
    match json_lines(
        Command::new(&plan.mf)
            .args([
                "launch",
                "--nproc-per-node",
                "1",
                "--master-port",
                "29517",
                "--",
            ])
            .arg(&plan.check)
            .args(["comm", "--device", plan.device]),
    ) {
        Ok(vs) if !vs.is_empty() => raw.extend(vs),
        Ok(_) => raw.push(failed("comm", anyhow::anyhow!("no result line"))),
        Err(e) => raw.push(failed("comm", e)),
    }
    // Two ranks on the one GPU: NCCL may refuse them (a "duplicate GPU"); the table says which.
    if plan.device == "cuda" {
        let two = json_lines(
            Command::new("timeout")
                .arg("120")
                .arg(&plan.mf)
                .args([
                    "launch",
                    "--nproc-per-node",
                    "2",
                    "--master-port",
                    "29518",
                    "--",
                ])
                .arg(&plan.check)
                .args(["comm", "--device", plan.device, "--same-gpu"]),
        );
        match two {
            Ok(vs) if !vs.is_empty() => raw.extend(vs),
            other => raw.push(json!({
                "check": "comm world 2 on one GPU", "ok": true, "result": "refused",
                "detail": format!("NCCL did not run two ranks on one GPU: {}",
                    other.err().map_or("no result line".into(), |e| format!("{e:#}"))),
            })),
        }
    }
    // 4. Speed against the device's own PyTorch/transformers, alternating.
    let mut speed = Vec::new();
    for case in speed_cases(plan) {
        // The GPU run must end within 8 minutes so that a rerun fits the lease: later speed
        // cases give way, and the table says so.
        if t0.elapsed().as_secs() > SPEED_DEADLINE_S {
            raw.push(json!({"check": format!("speed {}", case.name), "ok": true,
                "result": "skipped", "detail": format!("the run passed {SPEED_DEADLINE_S} s")}));
            continue;
        }
        match speed_case(plan, &case) {
            Ok(v) => speed.push(v),
            Err(e) => raw.push(failed(&format!("speed {}", case.name), e)),
        }
    }
    let rows: Vec<Row> = raw.iter().map(row_of).collect();
    let mut table = format!(
        "gpu-check on {} ({}), {:.0} s\n\n| check | result | detail |\n|---|---|---|\n",
        plan.device,
        gpu_name(&plan.python),
        t0.elapsed().as_secs_f64()
    );
    for r in &rows {
        table += &format!(
            "| {} | {} | {} |\n",
            r.check,
            r.result
                .as_deref()
                .unwrap_or(if r.ok { "ok" } else { "FAILED" }),
            r.detail.replace('|', "/")
        );
    }
    if !speed.is_empty() {
        table += "\n| speed | mindformers-rs | PyTorch | ratio (median) | note |\n|---|---|---|---|---|\n";
        for v in &speed {
            table += &format!(
                "| {} | {:.1} {} | {:.1} | {:.2}x | {} |\n",
                v["name"].as_str().unwrap_or("?"),
                v["mf"].as_f64().unwrap_or(0.0),
                v["unit"].as_str().unwrap_or(""),
                v["torch"].as_f64().unwrap_or(0.0),
                v["ratio"].as_f64().unwrap_or(0.0),
                v["note"].as_str().unwrap_or("")
            );
            raw.push(v.clone());
        }
    }
    print!("{table}");
    std::fs::write(plan.out.join("gpu-check.md"), &table)?;
    std::fs::write(
        plan.out.join("gpu-check.jsonl"),
        raw.iter().map(|v| format!("{v}\n")).collect::<String>(),
    )?;
    let bad: Vec<&str> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.check.as_str())
        .collect();
    if !bad.is_empty() {
        bail!(
            "gpu-check: {} check(s) failed: {}",
            bad.len(),
            bad.join(", ")
        );
    }
    eprintln!("gpu-check: all {} checks passed", rows.len());
    Ok(())
}

/// `mf generate --device D --json` on a copy of a fixture with a word-level tokenizer
/// (token `t{i}` is id `i`), so the fixture's greedy case is a text prompt.
fn cli_generate(plan: &Plan, fixture: &Path) -> Result<Value> {
    let name = fixture
        .file_name()
        .map_or("?".into(), |n| n.to_string_lossy());
    let model = plan.out.join(format!("mf-generate-{name}"));
    std::fs::create_dir_all(&model)?;
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), model.join(f)).with_context(|| format!("copying {f}"))?;
    }
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json"))?)?;
    let vocab = config["vocab_size"]
        .as_u64()
        .context("config.json: vocab_size")? as usize;
    std::fs::write(
        model.join("tokenizer.json"),
        serde_json::to_string(&crate::packaging::tiny_word_tokenizer(vocab))?,
    )?;
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json"))?)?;
    let case = &expected["cases"]["greedy"];
    let prompt = case["prompt"]
        .as_array()
        .context("expected.json: greedy case")?
        .iter()
        .map(|i| format!("t{}", i.as_u64().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(" ");
    let out = json_lines(
        Command::new(&plan.mf)
            .args(["generate", "--model"])
            .arg(&model)
            .args(["--device", plan.device, "--json", "--max-new-tokens"])
            .arg(case["max_new_tokens"].to_string())
            .arg(&prompt),
    )?;
    let got = out.last().context("no JSON from mf generate")?["output_ids"][0].clone();
    let ok = got == case["output_ids"];
    Ok(json!({"check": format!("mf generate {name} f32"), "ok": ok,
              "detail": {"ids_equal_transformers": ok, "tokens": case["max_new_tokens"]}}))
}

/// The GPU's name from the device's PyTorch, or the CPU's model on the dry run.
fn gpu_name(python: &Path) -> String {
    Command::new(python)
        .args([
            "-c",
            "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// One speed comparison: the `mf` command and the PyTorch script that do the same work.
struct SpeedCase {
    name: String,
    mf: Vec<String>,
    torch: Vec<String>,
    unit: &'static str,
    /// Dense bf16 peak of the GPU, for the MFU of training rows.
    mfu_peak: Option<f64>,
}

fn speed_cases(plan: &Plan) -> Vec<SpeedCase> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let dev = plan.device;
    let mut cases = Vec::new();
    // GPT-2 small and a ~1B LLaMA (16 layers, width 2048, 32 heads, 8 kv heads, SwiGLU 5632).
    let (gpt2, llama, new_tokens, batches): (Vec<&str>, Vec<&str>, &str, &[&str]) = if plan.full {
        (
            vec![],
            vec![
                "num_layers=16",
                "hidden_size=2048",
                "num_heads=32",
                "n_kv_heads=8",
                "intermediate_size=5632",
            ],
            "128",
            &["1", "32"],
        )
    } else {
        (
            vec!["num_layers=2", "hidden_size=64", "num_heads=4"],
            vec![
                "num_layers=2",
                "hidden_size=64",
                "num_heads=4",
                "n_kv_heads=2",
                "intermediate_size=128",
            ],
            "8",
            &["1"],
        )
    };
    let dtype = if plan.full { "bf16" } else { "f32" };
    for b in batches {
        for (model, preset, sets) in [("gpt2", "gpt2", &gpt2), ("llama", "llama2_7b", &llama)] {
            let mut mf = s(&[
                "bench-generate",
                "--preset",
                preset,
                "--batch",
                b,
                "--new-tokens",
                new_tokens,
                "--repeats",
                "1",
                "--dtype",
                dtype,
                "--device",
                dev,
            ]);
            let mut torch = s(&[
                "tools/bench/hf_generate.py",
                "--model",
                model,
                "--batch",
                b,
                "--new-tokens",
                new_tokens,
                "--repeats",
                "1",
                "--dtype",
                dtype,
                "--device",
                dev,
            ]);
            if model == "llama" {
                // transformers' LLaMA side has 2048 positions; the preset's 4096 would differ.
                mf.extend(s(&["--set", "seq_length=2048"]));
            }
            for kv in sets.iter() {
                mf.extend(s(&["--set", kv]));
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                let flag = match k {
                    "num_layers" => "--layers",
                    "hidden_size" => "--hidden",
                    "num_heads" => "--heads",
                    "n_kv_heads" => "--kv-heads",
                    _ => "--intermediate",
                };
                torch.extend(s(&[flag, v]));
            }
            cases.push(SpeedCase {
                name: format!("decode {model} {dtype} batch {b}"),
                mf,
                torch,
                unit: "tok/s",
                mfu_peak: None,
            });
        }
    }
    // ~350M GPT-2 (24 layers, width 1024, 16 heads), bf16, seq 1024, batch 8.
    let (layers, hidden, heads, seq, batch) = if plan.full {
        ("24", "1024", "16", "1024", "8")
    } else {
        ("2", "64", "4", "32", "2")
    };
    let mut mf = s(&[
        "bench-train",
        "--preset",
        "gpt2",
        "--set",
        &format!("num_layers={layers}"),
        "--set",
        &format!("hidden_size={hidden}"),
        "--set",
        &format!("num_heads={heads}"),
        "--seq-length",
        seq,
        "--batch",
        batch,
        "--steps",
        "4",
        "--warmup",
        "2",
        "--device",
        dev,
    ]);
    let mut torch = s(&[
        "tools/bench/hf_train.py",
        "--layers",
        layers,
        "--hidden",
        hidden,
        "--heads",
        heads,
        "--seq-length",
        seq,
        "--batch",
        batch,
        "--steps",
        "4",
        "--warmup",
        "2",
        "--device",
        dev,
    ]);
    if plan.full {
        mf.push("--bf16".into());
        torch.push("--bf16".into());
    }
    cases.push(SpeedCase {
        name: format!(
            "train gpt2 {} {}",
            if plan.full { "350M bf16" } else { "tiny f32" },
            format_args!("seq {seq} batch {batch}")
        ),
        mf,
        torch,
        unit: "tok/s",
        mfu_peak: plan.full.then_some(790e12),
    });
    cases
}

/// Runs the two sides alternately (A B A B) and reports the medians and their ratio.
fn speed_case(plan: &Plan, case: &SpeedCase) -> Result<Value> {
    let rounds = 2;
    let (mut ours, mut theirs, mut params) = (Vec::new(), Vec::new(), 0.0);
    for _ in 0..rounds {
        let a = json_lines(Command::new(&plan.mf).args(&case.mf))?;
        let a = a.last().context("no result line from mf")?;
        ours.push(a["tokens_per_s"].as_f64().context("no tokens_per_s")?);
        params = a["parameters"].as_f64().unwrap_or(0.0);
        let b = json_lines(
            Command::new(&plan.python)
                .args(&case.torch)
                .current_dir(&plan.root),
        )?;
        let b = b.last().context("no result line from PyTorch")?;
        theirs.push(b["tokens_per_s"].as_f64().context("no tokens_per_s")?);
    }
    let (m, t) = (crate::median(ours.clone()), crate::median(theirs.clone()));
    let note = match case.mfu_peak {
        Some(peak) => format!(
            "MFU {:.0}% vs {:.0}% ({:.0}M parameters, 6·N·tokens over {:.0} TFLOP/s)",
            100.0 * 6.0 * params * m / peak,
            100.0 * 6.0 * params * t / peak,
            params / 1e6,
            peak / 1e12
        ),
        None => format!("runs: {ours:.1?} vs {theirs:.1?}"),
    };
    Ok(
        json!({"check": "speed", "name": case.name, "unit": case.unit, "mf": m, "torch": t,
              "ratio": m / t, "note": note}),
    )
}

/// Builds the bundle the GPU machine runs: release binaries against libtorch 2.11.
fn prepare(root: &Path) -> Result<()> {
    let base = root.join("target/gpu-check");
    let wheel_dir = base.join("wheel");
    let libtorch = base.join("unpacked/torch");
    if !libtorch.join("lib/libtorch_cuda.so").exists() {
        std::fs::create_dir_all(&wheel_dir)?;
        crate::run(
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--disable-pip-version-check",
                    "--platform",
                    "manylinux_2_28_x86_64",
                    "--python-version",
                    "3.12",
                    "-d",
                ])
                .arg(&wheel_dir)
                .arg(format!("torch=={DEVICE_TORCH}")),
        )?;
        let wheel = std::fs::read_dir(&wheel_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    n.to_string_lossy()
                        .starts_with(&format!("torch-{DEVICE_TORCH}"))
                })
            })
            .context("pip downloaded no torch wheel")?;
        // Only the C++ library and headers are needed to build; the wheel is ~500 MB.
        crate::run(
            Command::new("unzip")
                .args(["-q", "-o"])
                .arg(&wheel)
                .args(["torch/lib/*", "torch/include/*", "-d"])
                .arg(base.join("unpacked")),
        )?;
    }
    // A copy of the working tree (committed or not) whose manifest pins tch 0.24.
    let src = base.join("src");
    let _ = std::fs::remove_dir_all(&src);
    let files = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()?;
    for f in files.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let rel = Path::new(std::str::from_utf8(f)?);
        let from = root.join(rel);
        if !from.is_file() {
            continue;
        }
        let to = src.join(rel);
        std::fs::create_dir_all(to.parent().context("a file has a folder")?)?;
        std::fs::copy(&from, &to)?;
    }
    let manifest = src.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)?;
    // torch-sys is tch's own binding crate: both move together.
    let mut pinned = text.clone();
    for krate in ["tch", "torch-sys"] {
        let from = format!("\n{krate} = \"0.26\"\n");
        if !pinned.contains(&from) {
            bail!("Cargo.toml has no `{krate} = \"0.26\"` line to pin to {DEVICE_TCH}");
        }
        pinned = pinned.replace(&from, &format!("\n{krate} = \"{DEVICE_TCH}\"\n"));
    }
    std::fs::write(&manifest, pinned)?;
    let target = base.join("target");
    crate::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "-p",
                "mindformers",
                "--features",
                "nccl",
                "--bin",
                "mf",
                "--example",
                "device_check",
            ])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", &target)
            .env("LIBTORCH", &libtorch)
            .env_remove("LIBTORCH_USE_PYTORCH"),
    )?;
    // This workspace's own target dir, whatever the xtask running now was built into.
    crate::run(
        crate::cargo()
            .args(["build", "--release", "-p", "xtask"])
            .env("CARGO_TARGET_DIR", root.join("target")),
    )?;
    let bundle = base.join("bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&bundle)?;
    let mut total = 0;
    for (from, name) in [
        (target.join("release/mf"), "mf"),
        (target.join("release/examples/device_check"), "device_check"),
        (root.join("target/release/xtask"), "xtask"),
    ] {
        let to = bundle.join(name);
        std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        // The symbols are not needed there and the carry limit is 64 MiB with the tree.
        let _ = Command::new("strip").arg(&to).status();
        total += std::fs::metadata(&to)?.len();
    }
    eprintln!(
        "bundle ready: {} ({:.1} MiB). On the GPU machine run, from the repository root:\n  \
         target/gpu-check/bundle/xtask gpu-check --run\nwith carry = [\"target/gpu-check/bundle\"]",
        bundle.display(),
        total as f64 / (1 << 20) as f64
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(full: bool) -> Plan {
        Plan {
            device: if full { "cuda" } else { "cpu" },
            root: PathBuf::from("."),
            mf: PathBuf::from("mf"),
            check: PathBuf::from("device_check"),
            python: PathBuf::from("python3"),
            out: PathBuf::from("out"),
            full,
        }
    }

    /// The value after `flag` in an argument list.
    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn both_sides_of_every_speed_case_run_the_same_shape_on_the_same_device() {
        for full in [true, false] {
            let p = plan(full);
            let cases = speed_cases(&p);
            assert_eq!(cases.len(), if full { 5 } else { 3 });
            for c in &cases {
                assert_eq!(after(&c.mf, "--device"), [p.device], "{}", c.name);
                assert_eq!(after(&c.torch, "--device"), [p.device], "{}", c.name);
                for (ours, theirs) in [("--batch", "--batch"), ("--new-tokens", "--new-tokens")] {
                    assert_eq!(after(&c.mf, ours), after(&c.torch, theirs), "{}", c.name);
                }
                let sets = after(&c.mf, "--set");
                for (key, flag) in [
                    ("num_layers", "--layers"),
                    ("hidden_size", "--hidden"),
                    ("num_heads", "--heads"),
                    ("n_kv_heads", "--kv-heads"),
                    ("intermediate_size", "--intermediate"),
                ] {
                    let ours: Vec<&str> = sets
                        .iter()
                        .filter_map(|s| s.strip_prefix(&format!("{key}=")))
                        .collect();
                    assert_eq!(ours, after(&c.torch, flag), "{}: {key}", c.name);
                }
                let bf16 = c.name.contains("bf16");
                assert_eq!(bf16, full, "{}", c.name);
                if c.name.starts_with("train") {
                    assert_eq!(c.mf.contains(&"--bf16".to_string()), bf16);
                    assert_eq!(c.torch.contains(&"--bf16".to_string()), bf16);
                } else {
                    let dtype = if bf16 { "bf16" } else { "f32" };
                    assert_eq!(after(&c.mf, "--dtype"), [dtype]);
                    assert_eq!(after(&c.torch, "--dtype"), [dtype]);
                }
            }
        }
    }

    #[test]
    fn result_lines_are_read_through_the_launchers_rank_prefix() {
        let rows = json_lines(Command::new("sh").args([
            "-c",
            r#"echo 'starting'; echo '[rank 0] {"check":"comm","ok":true}'; echo '{"x":2}'"#,
        ]))
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["check"], "comm");
        assert_eq!(rows[1]["x"], 2);
        // A command that fails without a result line is an error naming it.
        let err = json_lines(Command::new("sh").args(["-c", "echo broken >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken"), "{err}");
    }

    #[test]
    fn a_failed_check_is_marked_and_an_infer_row_names_fixture_and_dtype() {
        let r = row_of(
            &json!({"check": "infer", "fixture": "gpt2_tiny", "dtype": "bf16",
                               "max_abs_diff": 0.5, "bound": 0.25, "ok": false, "detail": {}}),
        );
        assert_eq!(r.check, "infer gpt2_tiny bf16");
        assert!(!r.ok);
        assert!(
            r.detail
                .starts_with("max abs diff 5.000e-1 (bound 2.500e-1)"),
            "{}",
            r.detail
        );
    }
}
