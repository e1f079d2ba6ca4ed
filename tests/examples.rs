//! Runs every example (the seed document's snippets) against a model cache holding small
//! randomly initialised GPT-2 models under the preset names, so the whole `from_pretrained`
//! path runs offline.
mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use mindformers::PreTrainedModel;

fn example_bin(name: &str) -> PathBuf {
    // Integration tests live in target/<profile>/deps; cargo builds examples beside them.
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

/// Runs an example with extra environment variables; asserts success, returns stdout.
fn run_env(name: &str, envs: &[(&str, &OsStr)]) -> String {
    let bin = example_bin(name);
    assert!(
        bin.exists(),
        "{} not built (cargo test builds examples)",
        bin.display()
    );
    let mut cmd = Command::new(&bin);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{name} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs an example against the model cache `mf_home`, offline.
fn run(name: &str, mf_home: &Path) -> String {
    run_env(
        name,
        &[
            ("MF_HOME", mf_home.as_os_str()),
            ("MF_OFFLINE", OsStr::new("1")),
        ],
    )
}

#[test]
fn every_seed_example_runs() {
    let home = tempfile::tempdir().unwrap();
    common::write_small_gpt2(&home.path().join("gpt2"), 1);
    common::write_small_gpt2(&home.path().join("gpt2_13b"), 2);
    let h = home.path();

    let out = run("auto_config_model", h);
    assert!(out.contains("gpt2 config: hidden_size=768 num_layers=12 num_heads=12 seq_length=1024 vocab_size=50257"), "{out}");
    assert!(out.contains("parameters loaded"), "{out}");
    let out = run("gpt2_config_model", h);
    assert!(
        out.contains(
            "gpt2_13b config: hidden_size=5120 num_layers=40 num_heads=40 seq_length=2048"
        ),
        "{out}"
    );
    let out = run("gpt2_secondary_development", h);
    assert!(out.contains("124439808 parameters"), "{out}");

    let seed_tok =
        "{'input_ids': [31373, 0], 'token_type_ids': [0, 0], 'attention_mask': [1, 1]}\n";
    assert_eq!(run("auto_tokenizer", h), seed_tok);
    assert_eq!(run("gpt2_tokenizer", h), seed_tok);
    let proc128 = "{'text': Tensor(shape=[1, 128], dtype=Int32, value=\n[[31373,     0, 50256 ... 50256, 50256, 50256]])}\n";
    assert_eq!(run("auto_processor", h), proc128);
    assert_eq!(run("gpt2_processor", h), proc128);
    assert_eq!(
        run("gpt2_processor_custom", h),
        proc128.replace("128", "256")
    );

    for ex in ["pipeline_text_generation", "pipeline_custom_model"] {
        let out = run(ex, h);
        assert!(
            out.starts_with("[{'text_generation_text': [")
                && out.contains("I love Beijing, because"),
            "{out}"
        );
    }
}

#[test]
fn missing_weights_error_says_where_to_put_them() {
    let home = tempfile::tempdir().unwrap();
    let bin = example_bin("auto_config_model");
    let out = Command::new(&bin)
        .env("MF_HOME", home.path())
        .env("HF_HOME", home.path().join("hf"))
        .env("MF_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("weights not found") && err.contains("config.json and model.safetensors"),
        "{err}"
    );
}

#[test]
fn train_then_generate_demo_runs_end_to_end() {
    let out_dir = tempfile::tempdir().unwrap();
    let stdout = run_env(
        "train_then_generate",
        &[
            ("MF_DEMO_MAX_STEPS", OsStr::new("4")),
            ("MF_DEMO_OUTPUT", out_dir.path().as_os_str()),
        ],
    );
    assert!(stdout.contains("step 4/4"), "{stdout}");
    assert!(stdout.contains("plot:"), "{stdout}");
    assert!(
        stdout.contains("[{'text_generation_text': ['An increasing sequence: one, two,"),
        "{stdout}"
    );
    // Four steps teach nothing: the demo must say its answers are wrong, not pass them off.
    assert!(stdout.contains("0 of 2 answers right"), "{stdout}");
    assert!(
        stdout.contains("wrong: the next words are three, four, five"),
        "{stdout}"
    );
    assert!(out_dir
        .path()
        .join("checkpoint/step_4/model.safetensors")
        .is_file());
    assert_eq!(
        std::fs::read_to_string(out_dir.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

#[test]
fn seed_trainer_examples_run() {
    let home = tempfile::tempdir().unwrap();
    let out = run("training_arguments", home.path());
    assert!(
        out.contains("num_train_epochs = 3.0")
            && out.contains("batch_size = 2")
            && out.contains("warmup_steps = 1000"),
        "{out}"
    );
    // A small stand-in for PanGu-α 2.6B (same family and context length, random weights).
    tch::manual_seed(0);
    mindformers::PanguAlphaHeadModel::new(&mindformers::PanguAlphaConfig {
        hidden_size: 32,
        ffn_hidden_size: 64,
        num_layers: 2,
        num_heads: 2,
        ..Default::default()
    })
    .unwrap()
    .save_pretrained(&home.path().join("pangualpha_2_6b"))
    .unwrap();
    let stdout = run_env(
        "trainer_custom_dataset",
        &[
            ("MF_EXAMPLE_MAX_STEPS", OsStr::new("2")),
            ("MF_EXAMPLE_OUTPUT", home.path().join("out").as_os_str()),
            ("MF_HOME", home.path().as_os_str()),
            ("MF_OFFLINE", OsStr::new("1")),
        ],
    );
    assert!(
        stdout.contains("trained 2 steps") && stdout.contains("eval_loss"),
        "{stdout}"
    );
}

#[test]
fn seed_preset_task_example_trains_on_prepared_shards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corpus = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/corpus/counting.txt"),
    )
    .unwrap();
    let text: String = corpus.lines().take(6).map(|l| format!("{l}\n")).collect();
    std::fs::write(d.join("corpus.txt"), text).unwrap();
    let mut samples = 0;
    for split in ["train", "eval"] {
        let out = Command::new(env!("CARGO_BIN_EXE_mf"))
            .current_dir(d)
            .args([
                "data",
                "prepare",
                "--tokenizer",
                "gpt2",
                "--seq-length",
                "16",
            ])
            .args(["--output", split, "corpus.txt"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{stdout}");
        // "wrote T tokens (S samples of 17 tokens) ..."
        samples = stdout
            .split_once(" tokens (")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap();
    }
    common::write_small_gpt2(&d.join("tiny"), 0);
    let run_in = |cwd: &Path| {
        Command::new(example_bin("trainer_preset_task"))
            .current_dir(cwd)
            .env("MF_EXAMPLE_MODEL", d.join("tiny"))
            .output()
            .unwrap()
    };
    let out = run_in(d);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 3 epochs of floor(samples / 2) batches (batch_size=2, the last partial batch dropped).
    let steps = 3 * (samples / 2);
    assert!(
        stdout.contains(&format!("trained {steps} steps")),
        "{stdout}"
    );
    assert!(d
        .join(format!("output/checkpoint/step_{steps}/model.safetensors"))
        .is_file());
    let empty = tempfile::tempdir().unwrap();
    let out = run_in(empty.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mf data prepare"));
}

#[test]
fn parallel_seed_examples_run() {
    let out_dir = tempfile::tempdir().unwrap();
    let envs = [
        ("MF_EXAMPLE_MAX_STEPS", OsStr::new("2")),
        ("MF_EXAMPLE_OUTPUT", out_dir.path().as_os_str()),
    ];
    let out = run_env("parallel_config", &envs);
    for n in [1, 2] {
        assert!(
            out.contains(&format!(
                "micro_batch_interleave_num={n}: 16 ranks trained 2 steps"
            )),
            "{out}"
        );
    }
    let out = run_env("recompute_config", &envs);
    assert!(
        out.contains("recompute=true select_recompute=false"),
        "{out}"
    );
    assert!(
        out.contains("recompute=false select_recompute=true"),
        "{out}"
    );
    assert!(
        out.contains("losses equal to training without recompute: true"),
        "{out}"
    );
    let out = run_env("seq_parallel", &envs);
    assert!(
        out.contains("use_seq_parallel=True model_parallel=2"),
        "{out}"
    );
}

/// Runs the init_context example with `WORLD_SIZE` set to `world` (or unset); returns stdout.
fn run_init_context(world: Option<&str>) -> String {
    let bin = example_bin("init_context");
    assert!(
        bin.exists(),
        "{} not built (cargo test builds examples)",
        bin.display()
    );
    let mut cmd = Command::new(&bin);
    cmd.env_remove("RANK").env_remove("WORLD_SIZE");
    if let Some(w) = world {
        cmd.env("WORLD_SIZE", w);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "init_context failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn seed_init_context_example_prints_rank_and_device_num() {
    let out = run_init_context(None);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "single device: rank_id=0, device_num=1",
            "DATA_PARALLEL: rank_id=0, device_num=1",
            "SEMI_AUTO_PARALLEL: rank_id=0, device_num=1",
        ],
        "{out}"
    );
    assert!(
        lines[3].starts_with("Ascend: ")
            && lines[3].contains("not supported")
            && lines[3].contains("device_target=\"cpu\" or \"cuda\""),
        "{out}"
    );
    // WORLD_SIZE sets the number of ranks of the parallel variants, not of the single device.
    let out = run_init_context(Some("4"));
    assert!(
        out.contains("single device: rank_id=0, device_num=1\n")
            && out.contains("DATA_PARALLEL: rank_id=0, device_num=4\n")
            && out.contains("SEMI_AUTO_PARALLEL: rank_id=0, device_num=4\n"),
        "{out}"
    );
}
