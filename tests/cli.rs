//! The `mf` command: outputs and one-line errors for bad input.
mod common;

use std::path::Path;
use std::process::{Command, Output};

fn mf(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mf"))
        .args(args)
        .env("MF_HOME", home)
        .env("HF_HOME", home.join("hf"))
        .env("MF_OFFLINE", "1")
        .output()
        .unwrap()
}

fn fails_with_one_line(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn tokenize_prints_one_json_object_per_text() {
    let home = tempfile::tempdir().unwrap();
    let out = mf(
        &[
            "tokenize",
            "--tokenizer",
            "gpt2",
            "hello!",
            "I love Beijing, because",
        ],
        home.path(),
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{\"input_ids\":[31373,0],\"token_type_ids\":[0,0],\"attention_mask\":[1,1]}\n\
         {\"input_ids\":[40,1842,11618,11,780],\"token_type_ids\":[0,0,0,0,0],\"attention_mask\":[1,1,1,1,1]}\n"
    );
}

#[test]
fn generate_json_and_pipeline_on_a_model_dir() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("small");
    let out = mf(
        &[
            "init-model",
            "--preset",
            "gpt2",
            "--set",
            "num_layers=2",
            "--set",
            "hidden_size=16",
            "--set",
            "num_heads=2",
            "--output",
            dir.to_str().unwrap(),
        ],
        home.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = dir.to_str().unwrap();
    let out = mf(
        &[
            "generate",
            "--model",
            d,
            "--max-new-tokens",
            "5",
            "--json",
            "hello!",
            "I love Beijing, because",
        ],
        home.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = v["output_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(&ids[0].as_array().unwrap()[..2], [31373, 0]);
    assert!(ids[1].as_array().unwrap().len() <= 5 + 5);
    assert!(v["text_generation_text"][1]
        .as_str()
        .unwrap()
        .starts_with("I love Beijing, because"));
    // Same ids with the cache off, and with beams the output still starts with the prompt.
    let out2 = mf(
        &[
            "generate",
            "--model",
            d,
            "--max-new-tokens",
            "5",
            "--json",
            "--no-past",
            "hello!",
            "I love Beijing, because",
        ],
        home.path(),
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out2.stdout).unwrap()["output_ids"],
        v["output_ids"]
    );
    let out = mf(
        &[
            "generate",
            "--model",
            d,
            "--max-new-tokens",
            "3",
            "--num-beams",
            "2",
            "--json",
            "hello!",
        ],
        home.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = mf(
        &[
            "pipeline",
            "--task",
            "text_generation",
            "--model",
            d,
            "--max-length",
            "8",
            "I love Beijing, because",
        ],
        home.path(),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("[{'text_generation_text': [") && text.contains("I love Beijing, because"),
        "{text}"
    );

    let out = mf(
        &[
            "pipeline",
            "--task",
            "text_generation",
            "--model",
            d,
            "--max-length",
            "8",
            "--json",
            "a",
            "b c",
        ],
        home.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(
        v[1]["text_generation_text"][0]
            .as_str()
            .unwrap()
            .starts_with("b c"),
        "{v}"
    );

    // Streaming prints the prompt and continuation on one line.
    let out = mf(
        &[
            "generate",
            "--model",
            d,
            "--max-new-tokens",
            "4",
            "--do-sample",
            "--seed",
            "3",
            "hello!",
        ],
        home.path(),
    );
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("hello!"));
}

#[test]
fn bad_input_exits_with_one_line() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    fails_with_one_line(
        &mf(&["generate", "--model", "./no/such/dir", "x"], h),
        "does not exist",
    );
    fails_with_one_line(
        &mf(&["generate", "--model", "gpt7", "x"], h),
        "unknown model 'gpt7'",
    );
    fails_with_one_line(
        &mf(&["generate", "--model", "gpt2", "x"], h),
        "weights not found",
    );
    fails_with_one_line(&mf(&["generate", "--model", "gpt2"], h), "no prompt given");
    fails_with_one_line(&mf(&["tokenize"], h), "no text given");
    fails_with_one_line(
        &mf(&["generate", "--model", "gpt2", "--bogus", "x"], h),
        "--bogus",
    );
    fails_with_one_line(
        &mf(
            &["pipeline", "--task", "translation", "--model", "gpt2", "x"],
            h,
        ),
        "unknown task 'translation'",
    );

    let dir = h.join("m");
    common::write_small_gpt2(&dir, 5);
    let d = dir.to_str().unwrap();
    fails_with_one_line(
        &mf(&["generate", "--model", d, "--top-p", "1.5", "x"], h),
        "top_p",
    );
    fails_with_one_line(
        &mf(&["generate", "--model", d, "--device", "cuda:7", "x"], h),
        "cuda:7",
    );
    fails_with_one_line(
        &mf(&["generate", "--model", d, "--dtype", "int4", "x"], h),
        "dtype 'int4'",
    );

    let broken = h.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("config.json"),
        "{\"model_type\": \"gpt2\", \"n_embd\": ",
    )
    .unwrap();
    fails_with_one_line(
        &mf(
            &[
                "generate",
                "--model",
                broken.to_str().unwrap(),
                "--tokenizer",
                "gpt2",
                "x",
            ],
            h,
        ),
        "invalid config",
    );
    std::fs::copy(dir.join("config.json"), broken.join("config.json")).unwrap();
    std::fs::write(
        broken.join("model.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    )
    .unwrap();
    fails_with_one_line(
        &mf(
            &[
                "generate",
                "--model",
                broken.to_str().unwrap(),
                "--tokenizer",
                "gpt2",
                "x",
            ],
            h,
        ),
        "missing tensor(s)",
    );
}

#[test]
fn data_prepare_writes_shards_the_trainer_reads() {
    let home = tempfile::tempdir().unwrap();
    let corpus = home.path().join("c.jsonl");
    std::fs::write(
        &corpus,
        "{\"text\": \"hello! I love Beijing, because\"}\n{\"text\": \"hello!\"}\n",
    )
    .unwrap();
    let out_dir = home.path().join("train");
    let out = mf(
        &[
            "data",
            "prepare",
            "--tokenizer",
            "gpt2",
            "--seq-length",
            "3",
            "--output",
            out_dir.to_str().unwrap(),
            corpus.to_str().unwrap(),
        ],
        home.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 7 tokens + eos, 2 tokens + eos = 11 tokens: two samples of 4.
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!(
            "wrote 8 tokens (2 samples of 4 tokens) in 1 shard(s) to {}",
            out_dir.display()
        )
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenized"));

    // The seed's `Trainer(task, model, args, train_dataset='./train', eval_dataset='./eval')`.
    tch::manual_seed(0);
    let cfg = mindformers::GPT2Config {
        hidden_size: 16,
        num_layers: 1,
        num_heads: 2,
        seq_length: 8,
        ..Default::default()
    };
    let model = Box::new(mindformers::GPT2LMHeadModel::new(&cfg).unwrap());
    let args = mindformers::TrainingArguments {
        output_dir: home.path().join("run").display().to_string(),
        batch_size: Some(2),
        num_train_epochs: 2.0,
        ..Default::default()
    };
    let mut t = mindformers::Trainer::new("text_generation", model, args)
        .unwrap()
        .train_dataset(out_dir.as_path())
        .unwrap()
        .eval_dataset(out_dir.as_path())
        .unwrap();
    assert_eq!(t.train().unwrap().global_step, 2);
    assert!(t.evaluate().unwrap().eval_loss.is_finite());

    fails_with_one_line(
        &mf(
            &[
                "data",
                "prepare",
                "--tokenizer",
                "gpt2",
                "--seq-length",
                "3",
                "--output",
                "x",
            ],
            home.path(),
        ),
        "no input files",
    );
    let err = mindformers::Trainer::new(
        "text_generation",
        Box::new(mindformers::GPT2LMHeadModel::new(&cfg).unwrap()),
        Default::default(),
    )
    .unwrap()
    .train_dataset(home.path())
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("mf data prepare"), "{err}");
}

/// The lines of `text` as a sorted list (ranks print in any order).
fn sorted_lines(text: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(text)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn launch_starts_one_prefixed_process_per_rank() {
    let home = tempfile::tempdir().unwrap();
    let out = mf(
        &[
            "launch",
            "--nproc-per-node",
            "3",
            "--",
            "sh",
            "-c",
            "echo rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK; \
             echo addr=$MASTER_ADDR:$MASTER_PORT lws=$LOCAL_WORLD_SIZE >&2",
        ],
        home.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sorted_lines(&out.stdout),
        [
            "[rank 0] rank=0 world=3 local=0",
            "[rank 1] rank=1 world=3 local=1",
            "[rank 2] rank=2 world=3 local=2",
        ]
    );
    // stderr is prefixed too, and goes to stderr.
    assert_eq!(
        sorted_lines(&out.stderr),
        [
            "[rank 0] addr=127.0.0.1:29500 lws=3",
            "[rank 1] addr=127.0.0.1:29500 lws=3",
            "[rank 2] addr=127.0.0.1:29500 lws=3",
        ]
    );
}

#[test]
fn launch_stops_every_rank_when_one_fails() {
    let home = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let out = mf(
        &[
            "launch",
            "--nproc-per-node",
            "3",
            "--",
            "sh",
            "-c",
            "if [ $RANK = 1 ]; then exit 3; fi; sleep 30",
        ],
        home.path(),
    );
    let elapsed = start.elapsed();
    // The sleeping ranks (and their `sleep` children) were stopped, not waited for.
    assert!(elapsed.as_secs_f64() < 15.0, "took {elapsed:?}");
    fails_with_one_line(&out, "rank 1 (local rank 1) exited with status 3");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn launch_on_a_second_node_offsets_the_ranks() {
    let home = tempfile::tempdir().unwrap();
    let out = mf(
        &[
            "launch",
            "--nproc-per-node",
            "2",
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master-addr",
            "10.0.0.1",
            "--master-port",
            "29400",
            "--",
            "sh",
            "-c",
            "echo RANK=$RANK WORLD_SIZE=$WORLD_SIZE LOCAL_RANK=$LOCAL_RANK $MASTER_ADDR:$MASTER_PORT",
        ],
        home.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sorted_lines(&out.stdout),
        [
            "[rank 2] RANK=2 WORLD_SIZE=4 LOCAL_RANK=0 10.0.0.1:29400",
            "[rank 3] RANK=3 WORLD_SIZE=4 LOCAL_RANK=1 10.0.0.1:29400",
        ]
    );
}

#[test]
fn launch_bad_arguments_exit_with_one_line() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    fails_with_one_line(
        &mf(&["launch", "--nproc-per-node", "0", "--", "true"], h),
        "--nproc-per-node 0",
    );
    fails_with_one_line(
        &mf(
            &[
                "launch",
                "--nproc-per-node",
                "1",
                "--nnodes",
                "2",
                "--node-rank",
                "2",
                "--",
                "true",
            ],
            h,
        ),
        "--node-rank 2 is out of range for --nnodes 2",
    );
    fails_with_one_line(
        &mf(&["launch", "--nproc-per-node", "2"], h),
        "no command given",
    );
    fails_with_one_line(
        &mf(
            &["launch", "--nproc-per-node", "2", "--", "/no/such/program"],
            h,
        ),
        "cannot start `/no/such/program` for rank 0",
    );
    fails_with_one_line(
        &mf(
            &[
                "launch",
                "--nproc-per-node",
                "1",
                "--",
                "sh",
                "-c",
                "kill -9 $$",
            ],
            h,
        ),
        "rank 0 (local rank 0) was killed by signal 9 (SIGKILL)",
    );
}

/// `mf pipeline --json --format hf` prints one list with, per input, exactly what
/// transformers' pipeline returned for it (the fixtures' recorded cases).
#[test]
fn pipeline_json_contract_for_the_nlp_tasks() {
    let home = tempfile::tempdir().unwrap();
    let fx = common::fixtures();
    let dir = |n: &str| fx.join(n).display().to_string();
    let expected = |n: &str, case: usize| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fx.join(n).join("expected.json")).unwrap(),
        )
        .unwrap();
        v["pipeline"][case]["output"].clone()
    };
    let run = |args: &[&str]| -> serde_json::Value {
        let out = mf(args, home.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let close = |got: &serde_json::Value, want: &serde_json::Value| {
        common::assert_close(got, want, 1e-5, "mf pipeline")
    };
    let mlm = dir("bert_tiny_mlm");
    let got = run(&[
        "pipeline",
        "--task",
        "fill-mask",
        "--model",
        &mlm,
        "--json",
        "--format",
        "hf",
        "--top-k",
        "3",
        "john [MASK] in london.",
    ]);
    close(&got[0], &expected("bert_tiny_mlm", 1));
    assert_eq!(got.as_array().unwrap().len(), 1);
    let cls = dir("bert_tiny_seqcls");
    let got = run(&[
        "pipeline",
        "--task",
        "text_classification",
        "--model",
        &cls,
        "--json",
        "--format",
        "hf",
        "--top-k",
        "2",
        "the music was good but the story was boring.",
    ]);
    close(&got[0], &expected("bert_tiny_seqcls", 2));
    let ner = dir("bert_tiny_tokcls");
    let got = run(&[
        "pipeline",
        "--task",
        "ner",
        "--model",
        &ner,
        "--json",
        "--format",
        "hf",
        "--aggregation-strategy",
        "simple",
        "john lives in paris and works for google.",
    ]);
    close(&got[0], &expected("bert_tiny_tokcls", 4));
    let qa = dir("bert_tiny_qa");
    let got = run(&[
        "pipeline",
        "--task",
        "question_answering",
        "--model",
        &qa,
        "--json",
        "--format",
        "hf",
        "--question",
        "where does john live?",
        "--context",
        "john lives in paris and mary works in london.",
    ]);
    close(&got[0], &expected("bert_tiny_qa", 0));
    // MindFormers' format: the answer under `text`.
    let got = run(&[
        "pipeline",
        "--task",
        "question_answering",
        "--model",
        &qa,
        "--json",
        "--question",
        "where does john live?",
        "--context",
        "john lives in paris and mary works in london.",
    ]);
    assert_eq!(got[0]["text"], expected("bert_tiny_qa", 0)["answer"]);
    let base = dir("bert_tiny_base");
    let got = run(&[
        "pipeline",
        "--task",
        "feature_extraction",
        "--model",
        &base,
        "--json",
        "--pooling",
        "mean",
        "--normalize",
        "john lives in paris.",
    ]);
    let emb: Vec<f64> = got[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(emb.len(), 32);
    assert!((emb.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-5);
    // Without --json: Python-style text as MindFormers prints it.
    let out = mf(
        &[
            "pipeline",
            "--task",
            "fill_mask",
            "--model",
            &mlm,
            "--top-k",
            "1",
            "john [MASK] in london.",
        ],
        home.path(),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("[[{'score': ") && text.contains("'token_str': "),
        "{text}"
    );
    // Bad input: one line each.
    fails_with_one_line(
        &mf(
            &[
                "pipeline",
                "--task",
                "fill_mask",
                "--model",
                &mlm,
                "no mask here",
            ],
            home.path(),
        ),
        "no mask token ([MASK])",
    );
    fails_with_one_line(
        &mf(
            &[
                "pipeline",
                "--task",
                "fill_mask",
                "--model",
                &mlm,
                "--top-k",
                "0",
                "a [MASK]",
            ],
            home.path(),
        ),
        "top_k must be at least 1",
    );
    fails_with_one_line(
        &mf(
            &[
                "pipeline",
                "--task",
                "question_answering",
                "--model",
                &qa,
                "--question",
                "where?",
            ],
            home.path(),
        ),
        "needs its context",
    );
    fails_with_one_line(
        &mf(
            &["pipeline", "--task", "summarization", "--model", &mlm, "x"],
            home.path(),
        ),
        "unknown task 'summarization'",
    );
    fails_with_one_line(
        &mf(
            &[
                "pipeline",
                "--task",
                "ner",
                "--model",
                &ner,
                "--aggregation-strategy",
                "longest",
                "x",
            ],
            home.path(),
        ),
        "unknown aggregation strategy 'longest'",
    );
    fails_with_one_line(
        &mf(
            &["pipeline", "--task", "ner", "--model", &ner, ""],
            home.path(),
        ),
        "empty",
    );
}

/// `mf tokenize --tokenizer DIR` prints transformers' ids for a BERT directory whose
/// tokenizer.json carries a template and a fixed padding.
#[test]
fn tokenize_a_hub_bert_directory_like_transformers() {
    let home = tempfile::tempdir().unwrap();
    let dir = common::fixtures().join("bert_hub_tokenizer");
    let out = mf(
        &[
            "tokenize",
            "--tokenizer",
            &dir.display().to_string(),
            "john lives in paris.",
        ],
        home.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        v["input_ids"],
        serde_json::json!([2, 192, 241, 119, 205, 18, 3])
    );
    assert_eq!(
        v["attention_mask"],
        serde_json::json!([1, 1, 1, 1, 1, 1, 1])
    );
}

/// A hub name (`org/name`) resolves through the Hugging Face cache, tokenizer included.
#[test]
fn pipeline_loads_a_hub_name_from_the_hf_cache() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hf/hub/models--tiny-org--bert-mlm");
    let snap = repo.join("snapshots/0123abc");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abc").unwrap();
    let src = common::fixtures().join("bert_tiny_mlm");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ] {
        std::fs::copy(src.join(f), snap.join(f)).unwrap();
    }
    let out = mf(
        &[
            "pipeline",
            "--task",
            "fill-mask",
            "--model",
            "tiny-org/bert-mlm",
            "--json",
            "--format",
            "hf",
            "--top-k",
            "3",
            "john [MASK] in london.",
        ],
        home.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("expected.json")).unwrap()).unwrap();
    common::assert_close(&got[0], &v["pipeline"][1]["output"], 1e-5, "hub name");
    // Offline and not cached: one line naming where it looked.
    fails_with_one_line(
        &mf(
            &[
                "pipeline",
                "--task",
                "fill-mask",
                "--model",
                "tiny-org/missing",
                "a [MASK]",
            ],
            home.path(),
        ),
        "offline",
    );
}
