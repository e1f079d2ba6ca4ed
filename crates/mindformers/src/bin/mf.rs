//! The `mf` command: tokenize, generate, run pipelines, create models from presets and launch
//! one process per rank.
//! Every failure prints one line (`error: ...`) and exits non-zero.
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mindformers::{
    pipeline, AutoConfig, AutoModel, AutoTokenizer, CallOptions, DType, Device,
    GenerationOverrides, PipelineInput, Streamer, TextStreamer,
};

#[derive(Parser)]
#[command(
    name = "mf",
    version,
    about = "mindformers-rs: tokenize, generate and run pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone, Default)]
struct GenArgs {
    /// Total length (prompt + new tokens).
    #[arg(long)]
    max_length: Option<usize>,
    /// Number of new tokens (overrides --max-length).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Sample instead of greedy decoding.
    #[arg(long)]
    do_sample: bool,
    /// Top-k filtering when sampling.
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus (top-p) filtering when sampling, in (0, 1].
    #[arg(long)]
    top_p: Option<f64>,
    /// Sampling temperature (> 0).
    #[arg(long)]
    temperature: Option<f64>,
    /// Repetition penalty (> 0; 1 = none).
    #[arg(long)]
    repetition_penalty: Option<f64>,
    /// Beam width.
    #[arg(long)]
    num_beams: Option<usize>,
    /// Sampling seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Disable the KV cache.
    #[arg(long)]
    no_past: bool,
}

impl GenArgs {
    fn overrides(&self) -> GenerationOverrides {
        GenerationOverrides {
            max_length: self.max_length,
            max_new_tokens: self.max_new_tokens,
            do_sample: Some(self.do_sample),
            top_k: self.top_k,
            top_p: self.top_p,
            temperature: self.temperature,
            repetition_penalty: self.repetition_penalty,
            num_beams: self.num_beams,
            seed: self.seed,
            use_past: self.no_past.then_some(false),
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Tokenize texts: one JSON object per text.
    Tokenize {
        /// Tokenizer preset name or directory.
        #[arg(long, default_value = "gpt2")]
        tokenizer: String,
        /// Texts to tokenize.
        texts: Vec<String>,
    },
    /// Generate text from prompts.
    Generate {
        /// Model preset name or Hugging Face directory.
        #[arg(long)]
        model: String,
        /// Tokenizer (defaults to the model's).
        #[arg(long)]
        tokenizer: Option<String>,
        #[command(flatten)]
        gen: GenArgs,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Print one JSON object with texts and ids.
        #[arg(long)]
        json: bool,
        /// Prompts.
        prompts: Vec<String>,
    },
    /// Run a task pipeline (text_generation, fill_mask, text_classification,
    /// token_classification, question_answering, feature_extraction; HF names too).
    Pipeline {
        /// Task name (MindFormers' `fill_mask` or HF's `fill-mask`, `ner`, ...).
        #[arg(long)]
        task: String,
        /// Model preset name, directory or hub name (org/name).
        #[arg(long)]
        model: String,
        #[command(flatten)]
        gen: GenArgs,
        /// Print one JSON list, one element per input, instead of Python-style text.
        #[arg(long)]
        json: bool,
        /// Output layout: mindformers (default) or hf.
        #[arg(long, default_value = "mindformers")]
        format: String,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// token_classification: none, simple, first, average or max.
        #[arg(long)]
        aggregation_strategy: Option<String>,
        /// question_answering: a question (pairs with the --context at the same position).
        #[arg(long)]
        question: Vec<String>,
        /// question_answering: the context of the --question at the same position.
        #[arg(long)]
        context: Vec<String>,
        /// question_answering: overlap of the windows a long context is split into.
        #[arg(long)]
        doc_stride: Option<usize>,
        /// question_answering: longest answer in tokens.
        #[arg(long)]
        max_answer_len: Option<usize>,
        /// question_answering: tokens per window.
        #[arg(long)]
        max_seq_len: Option<usize>,
        /// question_answering: also consider "no answer".
        #[arg(long)]
        handle_impossible_answer: bool,
        /// feature_extraction: mean, cls or none.
        #[arg(long)]
        pooling: Option<String>,
        /// feature_extraction: L2-normalise the pooled embedding.
        #[arg(long)]
        normalize: bool,
        /// Inputs.
        inputs: Vec<String>,
    },
    /// Create a randomly initialised model (HF layout, with tokenizer) from a preset.
    InitModel {
        /// Preset name (gpt2, gpt2_xl, ...).
        #[arg(long)]
        preset: String,
        /// Override a preset key, e.g. --set num_layers=2.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// RNG seed for the weights.
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Dtype of the written weights: f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Output directory.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// List model presets.
    Presets,
    /// Run a MindFormers-style run config (the counterpart of run_mindformer.py).
    Run {
        /// The run config (TOML), e.g. configs/gpt2/run_gpt2.toml.
        #[arg(long)]
        config: PathBuf,
        /// train, finetune, eval or predict (overrides the config's run_mode).
        #[arg(long)]
        run_mode: Option<String>,
        /// Weights to start from (overrides load_checkpoint): a checkpoint, an HF directory or a preset.
        #[arg(long)]
        load_checkpoint: Option<String>,
        /// Override a config value: section.key=value (TOML syntax), repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Input text for run_mode predict, repeatable.
        #[arg(long)]
        predict_data: Vec<String>,
        /// Run on N ranks as threads of this process (implies use_parallel); the config's
        /// parallel_config layout must use N devices.
        #[arg(long)]
        world_size: Option<usize>,
    },
    /// Measure Trainer throughput on random tokens (one JSON line; see `cargo xtask bench train`).
    BenchTrain {
        /// Preset name.
        #[arg(long, default_value = "gpt2")]
        preset: String,
        /// Override a preset key, e.g. --set num_layers=6.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Tokens per sample minus one.
        #[arg(long, default_value_t = 256)]
        seq_length: usize,
        /// Samples per step.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 6)]
        steps: usize,
        /// Untimed first steps.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Intra-op threads (default: libtorch's).
        #[arg(long)]
        threads: Option<i32>,
        /// Train in bf16 with f32 master weights (TrainingArguments.bf16).
        #[arg(long)]
        bf16: bool,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Parallel layout on the threads backend, as set_parallel_config.
        #[command(flatten)]
        layout: LayoutArgs,
    },
    /// Start one process per rank, torchrun-style (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...).
    Launch {
        /// Processes (ranks) on this node, e.g. one per GPU.
        #[arg(long)]
        nproc_per_node: usize,
        /// Nodes taking part (run `mf launch` on each).
        #[arg(long, default_value_t = 1)]
        nnodes: usize,
        /// This node's index, 0..nnodes.
        #[arg(long, default_value_t = 0)]
        node_rank: usize,
        /// Host of node 0, where rank 0 listens.
        #[arg(long, default_value = "127.0.0.1")]
        master_addr: String,
        /// Port rank 0 listens on.
        #[arg(long, default_value_t = 29500)]
        master_port: u16,
        /// Seconds stopped ranks get between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 5.0)]
        grace_period: f64,
        /// The command each rank runs, after `--`.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Dataset tools.
    Data {
        #[command(subcommand)]
        command: DataCmd,
    },
    /// Measure loading a model directory as a causal LM: seconds and peak RSS (one JSON line;
    /// see `cargo xtask bench load`).
    BenchLoad {
        /// Model directory, preset name or hub name.
        #[arg(long)]
        model: String,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, bf16 or f16.
        #[arg(long, default_value = "bf16")]
        dtype: String,
    },
    /// Measure greedy decode speed on a randomly initialised preset model (one JSON line).
    /// Time a BERT-base-shaped sequence classifier's forward (`cargo xtask bench encode`).
    BenchEncode {
        /// Sequences per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 128)]
        seq_length: usize,
        /// Timed repeats (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Intra-op threads (default: libtorch's).
        #[arg(long)]
        threads: Option<i32>,
    },
    BenchGenerate {
        /// Preset name.
        #[arg(long, default_value = "gpt2")]
        preset: String,
        /// Override a preset key.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Prompts per batch.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Prompt length in tokens.
        #[arg(long, default_value_t = 32)]
        prompt_len: usize,
        /// Tokens to generate.
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        /// Timed repeats (the best is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Intra-op threads (default: libtorch's).
        #[arg(long)]
        threads: Option<i32>,
        /// f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Small-batch matrix products: `mf` (this project's decode kernels where the CPU has
        /// AVX2/FMA) or `libtorch` (always libtorch's GEMM).
        #[arg(long, default_value = "mf")]
        kernels: String,
    },
}

#[derive(Subcommand)]
enum DataCmd {
    /// Tokenize text/JSONL files into memory-mapped token shards for training.
    Prepare {
        /// Tokenizer preset name or directory.
        #[arg(long)]
        tokenizer: String,
        /// Tokens per training sample minus one.
        #[arg(long)]
        seq_length: usize,
        /// Samples per shard file.
        #[arg(long, default_value_t = 65536)]
        shard_samples: usize,
        /// Output directory.
        #[arg(long)]
        output: PathBuf,
        /// Input .txt (one document per line) or .jsonl (a `text` field) files.
        inputs: Vec<PathBuf>,
    },
}

/// Records when each optimizer step finished.
struct StepClock(std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>);

impl mindformers::Callback for StepClock {
    fn name(&self) -> &str {
        "step_clock"
    }
    fn on_train_begin(
        &mut self,
        begin: &mindformers::trainer::callbacks::TrainBegin,
    ) -> mindformers::Result<()> {
        OPT_BYTES.store(
            begin.optimizer_state_bytes,
            std::sync::atomic::Ordering::SeqCst,
        );
        Ok(())
    }
    fn on_step_end(&mut self, _step: &mindformers::StepInfo, _c: &mut mindformers::TrainerControl) {
        if let Ok(mut t) = self.0.lock() {
            t.push(std::time::Instant::now());
        }
    }
}

/// `set_parallel_config` / `set_recompute_config` as command-line flags.
#[derive(clap::Args, Debug, Clone)]
struct LayoutArgs {
    /// data_parallel.
    #[arg(long, default_value_t = 1)]
    data_parallel: usize,
    /// model_parallel.
    #[arg(long, default_value_t = 1)]
    model_parallel: usize,
    /// pipeline_stage.
    #[arg(long, default_value_t = 1)]
    pipeline_stage: usize,
    /// micro_batch_num.
    #[arg(long, default_value_t = 1)]
    micro_batch_num: usize,
    /// micro_batch_interleave_num.
    #[arg(long, default_value_t = 1)]
    micro_batch_interleave_num: usize,
    /// use_seq_parallel.
    #[arg(long)]
    seq_parallel: bool,
    /// optimizer_shard (ZeRO-1).
    #[arg(long)]
    optimizer_shard: bool,
    /// vocab_emb_dp = false: vocabulary-parallel embedding and cross-entropy.
    #[arg(long)]
    vocab_parallel: bool,
    /// none, full (recompute) or selective (select_recompute).
    #[arg(long, default_value = "none")]
    recompute: String,
    /// Run a one-device layout through the parallel runtime too (measures its own cost).
    #[arg(long)]
    parallel_runtime: bool,
}

type Layout = (
    mindformers::trainer::ParallelConfig,
    mindformers::trainer::RecomputeConfig,
);

impl LayoutArgs {
    fn configs(&self) -> mindformers::Result<Layout> {
        let (recompute, select_recompute) = match self.recompute.as_str() {
            "none" => (false, false),
            "full" => (true, false),
            "selective" => (false, true),
            other => {
                return Err(mindformers::core::invalid(format!(
                    "--recompute {other}: expected none, full or selective"
                )))
            }
        };
        Ok((
            mindformers::trainer::ParallelConfig {
                data_parallel: self.data_parallel,
                model_parallel: self.model_parallel,
                pipeline_stage: self.pipeline_stage,
                micro_batch_num: self.micro_batch_num,
                micro_batch_interleave_num: self.micro_batch_interleave_num,
                use_seq_parallel: self.seq_parallel,
                optimizer_shard: self.optimizer_shard,
                vocab_emb_dp: !self.vocab_parallel,
                ..Default::default()
            },
            mindformers::trainer::RecomputeConfig {
                recompute,
                select_recompute,
                ..Default::default()
            },
        ))
    }
}

/// Decode steps between two read probes in [`StepWindows`].
const WINDOW_STEPS: usize = 16;

/// Times a generate's decode steps in windows of [`WINDOW_STEPS`], with a read probe before
/// and after each: the VMs' read rate moves by 1.5x within seconds, so a step is compared
/// with the rate the machine had next to it, not minutes away. The probes run between
/// windows, outside their clocks; the prefill (up to the first token) is not in any window.
struct StepWindows<'a> {
    probe: &'a mindformers::trainer::flops::ReadProbe,
    /// Tokens of row 0 seen so far (one per step).
    steps: usize,
    /// Steps in the open window.
    open: usize,
    start: std::time::Instant,
    /// The probe's rate at each window boundary.
    rates: Vec<f64>,
    /// (first token index, seconds) of each closed window.
    windows: Vec<(usize, f64)>,
}

impl<'a> StepWindows<'a> {
    fn new(probe: &'a mindformers::trainer::flops::ReadProbe) -> Self {
        StepWindows {
            probe,
            steps: 0,
            open: 0,
            start: std::time::Instant::now(),
            rates: Vec::new(),
            windows: Vec::new(),
        }
    }

    /// Each window's bytes read per second over the mean of its two probes; `bytes(s)` is
    /// what the step producing token `s` (1-based) reads.
    fn fractions(&self, bytes: impl Fn(usize) -> f64) -> Vec<f64> {
        self.windows
            .iter()
            .zip(self.rates.windows(2))
            .map(|(&(first, secs), r)| {
                let read: f64 = (first..first + WINDOW_STEPS).map(&bytes).sum();
                read / secs.max(1e-12) / ((r[0] + r[1]) / 2.0).max(1.0)
            })
            .collect()
    }
}

impl Streamer for StepWindows<'_> {
    fn put(&mut self, row: usize, _token: u32) {
        if row != 0 {
            return;
        }
        self.steps += 1;
        if self.steps > 1 {
            self.open += 1;
            if self.open < WINDOW_STEPS {
                return;
            }
            let first = self.steps + 1 - WINDOW_STEPS;
            self.windows
                .push((first, self.start.elapsed().as_secs_f64()));
            self.open = 0;
        }
        self.rates.push(self.probe.rate(2));
        self.start = std::time::Instant::now();
    }
}

/// Optimizer-state bytes of rank 0, seen by [`StepClock`] at train begin.
static OPT_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Peak resident memory of this process in MiB (VmHWM).
fn peak_rss_mb() -> f64 {
    proc_status_mib("VmHWM:")
}

/// Resets the high-water mark `peak_rss_mb` reads to the current RSS (Linux; elsewhere the
/// mark stays, which only overstates the peak). glibc keeps a freed 1 GiB probe buffer in the
/// heap, so the free pages are handed back first.
fn reset_peak_rss() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A line of /proc/self/smaps_rollup (`AnonHugePages:`) in MiB; 0 where there is none.
fn smaps_rollup_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .map_or(0.0, |kb: f64| kb / 1024.0)
}

/// A memory line of /proc/self/status (`VmHWM:`, `VmRSS:`) in MiB; 0 where there is none.
fn proc_status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn parse_sets(sets: &[String]) -> Result<Vec<(String, String)>> {
    sets.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--set '{s}' is not KEY=VALUE"))
        })
        .collect()
}

fn run(cli: Cli) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Cmd::Tokenize { tokenizer, texts } => {
            if texts.is_empty() {
                bail!("no text given: mf tokenize --tokenizer gpt2 \"hello!\"");
            }
            let tok = AutoTokenizer::from_pretrained(&tokenizer)?;
            for t in &texts {
                let enc = tok.encode(t)?;
                writeln!(out, "{}", serde_json::to_string(&enc.row(0))?)?;
            }
        }
        Cmd::Generate {
            model,
            tokenizer,
            gen,
            device,
            dtype,
            json,
            prompts,
        } => {
            if prompts.is_empty() {
                bail!("no prompt given: mf generate --model gpt2 \"I love Beijing, because\"");
            }
            let device: Device = device.parse()?;
            let dtype: DType = dtype.parse()?;
            let overrides = gen.overrides();
            // Each weight is read straight at `dtype` on `device`: no f32 copy first.
            let m = AutoModel::from_pretrained_on(&model, device, dtype)?;
            let tok = AutoTokenizer::from_pretrained(tokenizer.as_deref().unwrap_or(&model))?;
            let p = pipeline("text_generation")
                .model(m)
                .tokenizer(tok.clone())
                .build()?;
            // Stream the single-prompt case to the terminal as tokens arrive.
            let stream = !json && prompts.len() == 1 && gen.num_beams.unwrap_or(1) == 1;
            let outputs = if stream {
                write!(out, "{}", prompts[0])?;
                out.flush()?;
                let mut printer = TextStreamer::new(&tok, |piece: &str| {
                    print!("{piece}");
                    let _ = std::io::stdout().flush();
                });
                let res = p.call_batch(
                    &prompts,
                    &overrides,
                    Some(&mut printer as &mut dyn Streamer),
                )?;
                drop(printer);
                println!();
                res
            } else {
                p.call_batch(&prompts, &overrides, None)?
            };
            if json {
                let v = serde_json::json!({
                    "text_generation_text": outputs.iter().map(|o| o.text_generation_text[0].clone()).collect::<Vec<_>>(),
                    "output_ids": outputs.iter().map(|o| o.output_ids.clone()).collect::<Vec<_>>(),
                });
                writeln!(out, "{v}")?;
            } else if !stream {
                for o in &outputs {
                    writeln!(out, "{}", o.text_generation_text[0])?;
                }
            }
        }
        Cmd::Pipeline {
            task,
            model,
            gen,
            json,
            format,
            device,
            dtype,
            aggregation_strategy,
            question,
            context,
            doc_stride,
            max_answer_len,
            max_seq_len,
            handle_impossible_answer,
            pooling,
            normalize,
            inputs,
        } => {
            let spec = mindformers::pipelines::resolve_task(&task)?;
            if question.len() != context.len() {
                bail!(
                    "{} --question and {} --context given: every question needs its context",
                    question.len(),
                    context.len()
                );
            }
            let mut items: Vec<PipelineInput> = inputs
                .iter()
                .map(|i| PipelineInput::Text(i.clone()))
                .collect();
            if spec.name == "question_answering" {
                if !inputs.is_empty() {
                    bail!(
                        "question_answering takes --question Q --context C pairs, not plain inputs"
                    );
                }
                items = question
                    .into_iter()
                    .zip(context)
                    .map(|(question, context)| PipelineInput::Qa { question, context })
                    .collect();
            } else if !question.is_empty() {
                bail!("--question and --context are options of question_answering");
            }
            if items.is_empty() {
                bail!(
                    "no input given: mf pipeline --task {} --model MODEL INPUT...",
                    spec.name
                );
            }
            let generation = spec.name == "text_generation";
            let opts = CallOptions {
                format: format.parse()?,
                top_k: if generation { None } else { gen.top_k },
                aggregation_strategy: aggregation_strategy.map(|s| s.parse()).transpose()?,
                doc_stride,
                max_answer_len,
                max_seq_len,
                handle_impossible_answer,
                pooling: pooling.map(|s| s.parse()).transpose()?,
                normalize,
                generation: if generation {
                    gen.overrides()
                } else {
                    GenerationOverrides::default()
                },
            };
            let p = pipeline(spec.name)
                .model(model.as_str())
                .device(device.parse()?)
                .dtype(dtype.parse()?)
                .build_task()?;
            let outputs = p.run(&items, &opts)?;
            if json {
                writeln!(out, "{}", serde_json::Value::Array(outputs))?;
            } else {
                writeln!(
                    out,
                    "{}",
                    mindformers::pipelines::repr::py_repr(&serde_json::Value::Array(outputs))
                )?;
            }
        }
        Cmd::InitModel {
            preset,
            sets,
            seed,
            dtype,
            output,
        } => {
            let dtype: DType = dtype.parse()?;
            let cfg = AutoConfig::from_pretrained_with(&preset, &parse_sets(&sets)?)?;
            tch::manual_seed(seed);
            let family = cfg.family()?;
            let params = if !family.tasks.contains(&mindformers::Task::CausalLM) {
                // An encoder preset is built with the head of its task.
                let task = mindformers::models::auto::preset(&preset)?
                    .task
                    .as_deref()
                    .and_then(mindformers::models::auto::task_of_name)
                    .unwrap_or(mindformers::Task::MaskedLM);
                let mut model = AutoModel::from_config_task(&cfg, task)?;
                model.to(Device::Cpu, dtype)?;
                model.save_pretrained(&output)?;
                if let Ok(t) = AutoTokenizer::from_pretrained(&preset) {
                    t.save_pretrained(&output)?;
                }
                model.num_parameters()
            } else {
                let mut model = AutoModel::from_config(&cfg)?;
                model.to(Device::Cpu, dtype)?;
                model.save_pretrained(&output)?;
                if cfg.is::<mindformers::GPT2Config>() {
                    AutoTokenizer::from_pretrained(&preset)?.save_pretrained(&output)?
                }
                // No LLaMA/BLOOM/GLM/PanGu-α tokenizer is bundled; its files come with the
                // checkpoint.
                model.num_parameters()
            };
            writeln!(out, "wrote {} ({params} parameters)", output.display())?;
        }
        Cmd::BenchEncode {
            batch,
            seq_length,
            repeats,
            threads,
        } => {
            if let Some(t) = threads {
                tch::set_num_threads(t);
            }
            tch::manual_seed(0);
            let mut cfg = mindformers::BertConfig::default();
            cfg.set_labels(&["LABEL_0".to_string(), "LABEL_1".to_string()]);
            let model = mindformers::Bert::new(&cfg, mindformers::Task::SequenceClassification)?;
            let ids = tch::Tensor::randint_low(
                1000,
                30000,
                [batch as i64, seq_length as i64],
                (tch::Kind::Int64, tch::Device::Cpu),
            );
            let mask = ids.ones_like();
            let input = mindformers::ModelInputs::new(&ids, Some(&mask));
            let _g = tch::no_grad_guard();
            use mindformers::TaskModel;
            model.forward(&input)?;
            let mut times = Vec::new();
            for _ in 0..repeats.max(1) {
                let t0 = std::time::Instant::now();
                let out = model.forward(&input)?;
                // The logits are read, so the work cannot be deferred past the clock.
                let _ = out.logits()?.sum(tch::Kind::Float).double_value(&[]);
                times.push(t0.elapsed().as_secs_f64());
            }
            let mut sorted = times.clone();
            sorted.sort_by(f64::total_cmp);
            let med = sorted[sorted.len() / 2];
            let v = serde_json::json!({
                "impl": "mindformers-rs",
                "seconds": med,
                "seqs_per_s": batch as f64 / med,
                "times": times,
                "peak_rss_mb": peak_rss_mb(),
                "threads": tch::get_num_threads(),
            });
            writeln!(out, "{v}")?;
        }
        Cmd::BenchLoad {
            model,
            device,
            dtype,
        } => {
            let (device, dtype): (Device, DType) = (device.parse()?, dtype.parse()?);
            // libtorch (and the CUDA libraries it links) is mapped before main: what the load
            // itself costs is the peak minus this.
            let rss_before = proc_status_mib("VmRSS:");
            let t0 = std::time::Instant::now();
            let m = AutoModel::from_pretrained_on(&model, device, dtype)?;
            let load_s = t0.elapsed().as_secs_f64();
            let v = serde_json::json!({
                "impl": "mindformers-rs",
                "load_s": load_s,
                "peak_rss_mib": peak_rss_mb(),
                "rss_before_mib": rss_before,
                "parameters": m.num_parameters(),
                // The dtype the weights really have, to show no f32 copy was kept.
                "dtype": m
                    .parameters()
                    .first()
                    .and_then(|(_, t)| DType::from_kind(t.kind()))
                    .map(|d| d.to_string()),
            });
            writeln!(out, "{v}")?;
        }
        Cmd::BenchGenerate {
            preset,
            sets,
            batch,
            prompt_len,
            new_tokens,
            repeats,
            threads,
            dtype,
            device,
            kernels,
        } => {
            if let Some(t) = threads {
                tch::set_num_threads(t);
            }
            match kernels.as_str() {
                "mf" => {}
                "libtorch" => mindformers::models::kernels::set_enabled(false),
                other => bail!("--kernels takes `mf` or `libtorch`, not `{other}`"),
            }
            let device: Device = device.parse()?;
            let cfg = AutoConfig::from_pretrained_with(&preset, &parse_sets(&sets)?)?;
            tch::manual_seed(0);
            let mut model = AutoModel::from_config(&cfg)?;
            model.to(device, dtype.parse()?)?;
            let vocab = model.vocab_size() as i64;
            let prompts: Vec<Vec<u32>> = (0..batch)
                .map(|_| {
                    let t = tch::Tensor::randint(
                        vocab,
                        [prompt_len as i64],
                        (tch::Kind::Int64, tch::Device::Cpu),
                    );
                    Vec::<i64>::try_from(t).map(|v| v.into_iter().map(|x| x as u32).collect())
                })
                .collect::<Result<_, _>>()?;
            // No eos: every run does the same fixed amount of work.
            let gen = mindformers::GenerationConfig {
                max_new_tokens: Some(new_tokens),
                eos_token_id: vec![],
                ..model.generation_config()
            };
            let warm = mindformers::GenerationConfig {
                max_new_tokens: Some(4),
                ..gen.clone()
            };
            mindformers::generate(model.as_ref(), &prompts, &warm, None)?;
            // The read rate of these VMs moves by 1.5x within minutes: probe it on both sides
            // of the timed runs and divide by the mean. The probe's buffer is freed at once;
            // the high-water mark is reset after it, so the RSS column is the decode's own.
            let read_before = mindformers::trainer::flops::read_bandwidth(device.to_tch()?);
            reset_peak_rss();
            let mut best = f64::INFINITY;
            for _ in 0..repeats.max(1) {
                let t0 = std::time::Instant::now();
                let out = mindformers::generate(model.as_ref(), &prompts, &gen, None)?;
                best = best.min(t0.elapsed().as_secs_f64());
                if out[0].len() != prompt_len + new_tokens {
                    bail!(
                        "generated {} tokens instead of {new_tokens}",
                        out[0].len() - prompt_len
                    );
                }
            }
            // Before the bandwidth probe's 1 GiB buffer counts into the high-water mark.
            let peak_rss = peak_rss_mb();
            // The machine's limit for this decode: every matmul weight and the whole KV cache
            // so far are read once per step (the average step sits mid-way through the new
            // tokens); the read rate is measured here, at the same thread count.
            let params = model.parameters();
            let untied = params.iter().any(|(n, _)| n.ends_with("lm_head.weight"));
            let weight_bytes: usize = {
                let kept = mindformers::trainer::flops::matmul_parameters(&params, !untied);
                let elt = params
                    .first()
                    .map_or(4, |(_, t)| t.kind().elt_size_in_bytes());
                kept * elt
            };
            let kv_per_position = {
                let _g = tch::no_grad_guard();
                let mut cache = model.new_cache(2);
                let ids =
                    tch::Tensor::zeros([batch as i64, 1], (tch::Kind::Int64, device.to_tch()?));
                let _ = model.forward(&mindformers::ForwardInput::ids(&ids), Some(&mut cache))?;
                cache.bytes_per_position()
            };
            let mean_history = prompt_len as f64 + (new_tokens as f64 - 1.0) / 2.0;
            let step_bytes = weight_bytes as f64 + kv_per_position as f64 * mean_history;
            let read_after = mindformers::trainer::flops::read_bandwidth(device.to_tch()?);
            let read_bw = (read_before + read_after) / 2.0;
            // One more generate, untimed, with probes between windows of its decode steps.
            let window_fractions = {
                let probe = mindformers::trainer::flops::ReadProbe::new(device.to_tch()?);
                let mut w = StepWindows::new(&probe);
                mindformers::generate(model.as_ref(), &prompts, &gen, Some(&mut w))?;
                // Token `s` comes from the step that attends prompt_len + s - 1 positions.
                w.fractions(|s| {
                    weight_bytes as f64 + kv_per_position as f64 * (prompt_len + s - 1) as f64
                })
            };
            let limit = batch as f64 * read_bw / step_bytes;
            let kernels = match mindformers::models::kernels::best_simd() {
                Some(simd) if kernels == "mf" && device == Device::Cpu => simd.name(),
                _ => "libtorch",
            };
            let v = serde_json::json!({
                "impl": "mindformers-rs",
                "kernels": kernels,
                "read_gb_per_s_before": read_before / 1e9,
                "read_gb_per_s_after": read_after / 1e9,
                "weight_bytes": weight_bytes,
                "kv_bytes_per_position": kv_per_position,
                "step_bytes": step_bytes,
                "read_gb_per_s": read_bw / 1e9,
                "limit_tokens_per_s": limit,
                "window_steps": WINDOW_STEPS,
                "huge_page_mib": smaps_rollup_mib("AnonHugePages:"),
                "window_fractions": window_fractions,
                "batch": batch,
                "prompt_len": prompt_len,
                "new_tokens": new_tokens,
                "seconds": best,
                "tokens_per_s": (batch * new_tokens) as f64 / best,
                "peak_rss_mb": peak_rss,
                "threads": tch::get_num_threads(),
            });
            writeln!(out, "{v}")?;
        }
        Cmd::Data {
            command:
                DataCmd::Prepare {
                    tokenizer,
                    seq_length,
                    shard_samples,
                    output,
                    inputs,
                },
        } => {
            if inputs.is_empty() {
                bail!("no input files given: mf data prepare --tokenizer gpt2 --seq-length 1024 corpus.txt --output data/train");
            }
            let tok = AutoTokenizer::from_pretrained(&tokenizer)?;
            let index = mindformers::data::shards::prepare(
                &inputs,
                &tok,
                &tokenizer,
                seq_length,
                shard_samples,
                &output,
                |path, tokens| {
                    eprintln!("tokenized {} ({tokens} tokens so far)", path.display());
                },
            )?;
            writeln!(
                out,
                "wrote {} tokens ({} samples of {} tokens) in {} shard(s) to {}",
                index.total_tokens,
                index.total_tokens / (seq_length + 1),
                seq_length + 1,
                index.shards.len(),
                output.display()
            )?;
        }
        Cmd::BenchTrain {
            preset,
            sets,
            seq_length,
            batch,
            steps,
            warmup,
            threads,
            bf16,
            device,
            layout,
        } => {
            let (parallel, recompute) = layout.configs()?;
            let device: Device = device.parse()?;
            if let Some(t) = threads {
                tch::set_num_threads(t);
            }
            let kind = if bf16 {
                tch::Kind::BFloat16
            } else {
                tch::Kind::Float
            };
            let peak = mindformers::trainer::flops::matmul_peak_flops(device.to_tch()?, kind) / 1e9;
            let cfg = AutoConfig::from_pretrained_with(&preset, &parse_sets(&sets)?)?;
            tch::manual_seed(0);
            let mut model = AutoModel::from_config(&cfg)?;
            model.to(device, DType::F32)?;
            let params = model.num_parameters();
            let vocab = model.vocab_size() as i64;
            let total = warmup + steps;
            let rows: Vec<Vec<i64>> = (0..total * batch)
                .map(|_| {
                    Vec::<i64>::try_from(tch::Tensor::randint(
                        vocab,
                        [seq_length as i64 + 1],
                        (tch::Kind::Int64, tch::Device::Cpu),
                    ))
                })
                .collect::<Result<_, _>>()?;
            let dataset = mindformers::GeneratorDataset::new(rows, &["input_ids"])?;
            let dir = std::env::temp_dir().join(format!("mf-bench-train-{}", std::process::id()));
            let args = mindformers::TrainingArguments {
                output_dir: dir.display().to_string(),
                max_steps: Some(total),
                batch_size: Some(batch),
                learning_rate: 1e-4,
                save_strategy: "no".into(),
                logging_steps: total,
                shuffle: false,
                sink_mode: false,
                bf16,
                ..Default::default()
            };
            let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut trainer = mindformers::Trainer::new("text_generation", model, args)?
                .train_dataset(dataset)?;
            let ranks = parallel.device_num();
            trainer.set_parallel_config(parallel)?;
            trainer.set_recompute_config(recompute)?;
            trainer.use_parallel_runtime(layout.parallel_runtime);
            trainer.remove_callback("loss_monitor");
            trainer.add_callback(Box::new(StepClock(times.clone())));
            let start = std::time::Instant::now();
            trainer.train()?;
            let _ = std::fs::remove_dir_all(&dir);
            let stamps = times.lock().map(|t| t.clone()).unwrap_or_default();
            let from = if warmup == 0 {
                start
            } else {
                stamps[warmup - 1]
            };
            let secs = stamps
                .last()
                .map_or(0.0, |t| t.duration_since(from).as_secs_f64())
                / steps.max(1) as f64;
            let tokens_per_s = (batch * seq_length) as f64 / secs;
            let v = serde_json::json!({
                "impl": "mindformers-rs",
                "steps_per_s": 1.0 / secs,
                "tokens_per_s": tokens_per_s,
                "parameters": params,
                "peak_rss_mb": peak_rss_mb(),
                "matmul_peak_gflops": peak,
                "mfu": 6.0 * params as f64 * tokens_per_s / (peak * 1e9),
                "threads": tch::get_num_threads(),
                "ranks": ranks,
                "optimizer_state_bytes_rank0": OPT_BYTES.load(std::sync::atomic::Ordering::SeqCst),
            });
            writeln!(out, "{v}")?;
        }
        Cmd::Run {
            config,
            run_mode,
            load_checkpoint,
            mut sets,
            predict_data,
            world_size,
        } => {
            if let Some(m) = run_mode {
                sets.push(format!("run_mode=\"{m}\""));
            }
            if let Some(c) = load_checkpoint {
                sets.push(format!("load_checkpoint=\"{c}\""));
            }
            let cfg = mindformers::trainer::RunConfig::load(&config, &sets)?;
            mindformers::trainer::runner::run_with(&cfg, &predict_data, world_size, &mut out)?;
        }
        Cmd::Launch {
            nproc_per_node,
            nnodes,
            node_rank,
            master_addr,
            master_port,
            grace_period,
            command,
        } => {
            let grace_period =
                std::time::Duration::try_from_secs_f64(grace_period).with_context(|| {
                    format!("--grace-period {grace_period}: give a number of seconds >= 0")
                })?;
            // The threads copying the ranks' output lock stdout per line; holding the lock
            // here would block them.
            drop(out);
            mindformers::launch(&mindformers::LaunchOptions {
                nproc_per_node,
                nnodes,
                node_rank,
                master_addr,
                master_port,
                command,
                grace_period,
            })?;
        }
        Cmd::Presets => {
            for name in mindformers::models::auto::preset_names() {
                let p = mindformers::models::auto::preset(name)?;
                writeln!(out, "{name:<16} {:<10} {}", p.model_type, p.description)?;
            }
            for name in mindformers::models::lora::preset_names() {
                if let Some(p) = mindformers::models::lora::preset(name)? {
                    writeln!(out, "{name:<16} {:<10} {}", "lora", p.description)?;
                }
            }
        }
    }
    Ok(())
}

fn main() {
    // Before any tensor exists: large activations are reused instead of re-faulted.
    mindformers::core::memory::keep_freed_memory();
    // A libtorch failure surfaces as a panic inside tch; report it as one line like any error.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("internal error");
        eprintln!("error: internal: {}", msg.lines().next().unwrap_or(msg));
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                std::process::exit(
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        2
                    } else {
                        0
                    },
                );
            }
            let text = e.to_string();
            eprintln!(
                "{} (see mf --help)",
                text.lines().next().unwrap_or("error: bad arguments")
            );
            std::process::exit(2);
        }
    };
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let msg = format!("{e:#}");
            eprintln!("error: {}", msg.replace('\n', " "));
            std::process::exit(1);
        }
        Err(_) => std::process::exit(101),
    }
}
