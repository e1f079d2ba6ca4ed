//! The `Trainer`: train / evaluate a causal LM on named-column datasets with checkpoints that
//! resume exactly.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mf_core::checkpoint::SafeTensors;
use mf_core::{invalid, MfError, Result};
use mf_data::{Batch, BatchedDataset, Dataset};
use mf_models::{CausalLM, ForwardInput};
use tch::{Kind, Tensor};

use crate::args::{ResumeFrom, TrainingArguments};
use crate::checkpoint::{self, TrainerState};
use crate::optim::Optimizer;
use crate::parallel::{ParallelConfig, RecomputeConfig};

/// Tasks the trainer knows (MindFormers' names).
pub const TASKS: &[&str] = &["text_generation"];

/// A dataset handed to the trainer: already batched, or batched by the arguments' batch size.
pub enum DatasetArg {
    /// Used as batched.
    Batched(BatchedDataset),
    /// Batched with `batch_size` / `per_device_*_batch_size`.
    Unbatched(Dataset),
    /// A directory made by `mf data prepare` (memory-mapped token shards).
    Path(PathBuf),
}

impl From<&Path> for DatasetArg {
    fn from(p: &Path) -> Self {
        DatasetArg::Path(p.to_path_buf())
    }
}

impl From<&str> for DatasetArg {
    fn from(p: &str) -> Self {
        DatasetArg::Path(PathBuf::from(p))
    }
}

impl From<BatchedDataset> for DatasetArg {
    fn from(d: BatchedDataset) -> Self {
        DatasetArg::Batched(d)
    }
}

impl From<Dataset> for DatasetArg {
    fn from(d: Dataset) -> Self {
        DatasetArg::Unbatched(d)
    }
}

/// One logged training step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogRecord {
    /// Fractional epoch.
    pub epoch: f64,
    /// Optimizer step (1-based).
    pub step: usize,
    /// Steps in the run.
    pub total_steps: usize,
    /// Mean loss over the steps since the last log.
    pub loss: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds per step since the last log.
    pub step_time_s: f64,
    /// Tokens per second since the last log.
    pub tokens_per_s: f64,
    /// Samples per second since the last log.
    pub samples_per_s: f64,
}

/// Evaluation results.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvalMetrics {
    /// Mean next-token cross-entropy.
    pub eval_loss: f64,
    /// exp(eval_loss).
    pub perplexity: f64,
    /// Batches evaluated.
    pub batches: usize,
}

/// Hooks into the training loop.
pub trait Callback {
    /// A name, for `remove_callback`.
    fn name(&self) -> &str;
    /// After a logged step.
    fn on_log(&mut self, _record: &LogRecord) {}
    /// After every optimizer step (`step` is 1-based), with the step's loss.
    fn on_step(&mut self, _step: usize, _total: usize, _loss: f64) {}
    /// After a checkpoint was written.
    fn on_save(&mut self, _dir: &Path) {}
    /// After an evaluation; returning true stops training (early stopping).
    fn on_evaluate(&mut self, _metrics: &EvalMetrics) -> bool {
        false
    }
}

/// MindFormers' loss monitor: one line per logged step. On a terminal it also draws a progress
/// bar with ETA on stderr and prints the lines above it; in logs and pipes, plain lines only.
#[derive(Default)]
pub struct LossMonitor {
    bar: Option<indicatif::ProgressBar>,
}

impl LossMonitor {
    /// A loss monitor (the trainer installs one by default).
    pub fn new() -> Self {
        Self::default()
    }
}

impl Callback for LossMonitor {
    fn name(&self) -> &str {
        "loss_monitor"
    }
    fn on_step(&mut self, step: usize, total: usize, loss: f64) {
        if self.bar.is_none() && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            ) {
                b.set_style(style);
            }
            b
        });
        bar.set_position(step as u64);
        bar.set_message(format!("loss {loss:.4}"));
    }
    fn on_log(&mut self, r: &LogRecord) {
        let line = format!(
            "epoch {:.2} step {}/{} loss {:.4} lr {:.3e} grad_norm {:.3} step_time {:.3}s tokens/s {:.0} samples/s {:.1}",
            r.epoch, r.step, r.total_steps, r.loss, r.lr, r.grad_norm, r.step_time_s, r.tokens_per_s, r.samples_per_s
        );
        match &self.bar {
            Some(bar) => {
                bar.println(line);
                if r.step == r.total_steps {
                    bar.finish_and_clear();
                    self.bar = None;
                }
            }
            None => println!("{line}"),
        }
    }
}

/// What `train()` returns.
#[derive(Debug, Clone)]
pub struct TrainOutput {
    /// Optimizer steps done in all (including before a resume).
    pub global_step: usize,
    /// Loss of every optimizer step run by this call, in order.
    pub step_losses: Vec<f64>,
    /// The last checkpoint written, if any.
    pub last_checkpoint: Option<PathBuf>,
}

/// `Trainer(task, model, args, train_dataset, eval_dataset)`.
pub struct Trainer {
    task: String,
    model: Box<dyn CausalLM>,
    args: TrainingArguments,
    train_dataset: Option<BatchedDataset>,
    eval_dataset: Option<BatchedDataset>,
    callbacks: Vec<Box<dyn Callback>>,
    tokenizer: Option<mf_tokenizers::Tokenizer>,
    parallel: ParallelConfig,
    recompute: RecomputeConfig,
}

fn batched(arg: DatasetArg, batch_size: usize, drop_last: bool) -> Result<BatchedDataset> {
    match arg {
        DatasetArg::Batched(b) => Ok(b),
        DatasetArg::Unbatched(d) => d.batch(batch_size, drop_last),
        DatasetArg::Path(p) => mf_data::shards::open(&p)?.batch(batch_size, drop_last),
    }
}

impl Trainer {
    /// A trainer for `task` over `model`.
    pub fn new(task: &str, model: Box<dyn CausalLM>, args: TrainingArguments) -> Result<Self> {
        if !TASKS.contains(&task) {
            return Err(MfError::unknown("task", task, TASKS));
        }
        args.validate()?;
        Ok(Trainer {
            task: task.to_string(),
            model,
            args,
            train_dataset: None,
            eval_dataset: None,
            callbacks: vec![Box::new(LossMonitor::new())],
            tokenizer: None,
            parallel: ParallelConfig::default(),
            recompute: RecomputeConfig::default(),
        })
    }

    /// The tokenizer `predict` uses.
    pub fn tokenizer(mut self, tokenizer: mf_tokenizers::Tokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// `set_parallel_config(data_parallel, model_parallel, pipeline_stage, micro_batch_num, ...)`:
    /// validated and stored.
    pub fn set_parallel_config(&mut self, config: ParallelConfig) -> Result<()> {
        config.validate()?;
        self.parallel = config;
        Ok(())
    }

    /// `set_recompute_config(recompute, select_recompute, ...)`: validated and stored.
    pub fn set_recompute_config(&mut self, config: RecomputeConfig) -> Result<()> {
        config.validate()?;
        self.recompute = config;
        Ok(())
    }

    /// The stored parallel layout.
    pub fn parallel_config(&self) -> &ParallelConfig {
        &self.parallel
    }

    /// The stored recompute options.
    pub fn recompute_config(&self) -> &RecomputeConfig {
        &self.recompute
    }

    /// Loads a checkpoint's weights (a `step_N` directory or any HF-format directory), then trains.
    pub fn finetune(&mut self, checkpoint: &Path) -> Result<TrainOutput> {
        self.model.load_weights(&SafeTensors::open(checkpoint)?)?;
        self.train()
    }

    /// Generates from prompts with the trained model (needs `.tokenizer(...)`).
    pub fn predict<S: AsRef<str>>(
        &self,
        inputs: &[S],
        options: &mf_models::GenerationOverrides,
    ) -> Result<Vec<String>> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            invalid("predict needs a tokenizer: Trainer::new(...)?.tokenizer(tok)")
        })?;
        let mut cfg = self.model.generation_config().with(options);
        if let Some(eos) = tok.eos_token_id() {
            if cfg.eos_token_id.is_empty() {
                cfg.eos_token_id = vec![eos];
            }
        }
        let prompts = inputs
            .iter()
            .map(|t| tok.encode_ids(t.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let out = mf_models::generate(self.model.as_ref(), &prompts, &cfg, None)?;
        out.iter().map(|ids| tok.decode(ids, true)).collect()
    }

    /// Sets the training data.
    pub fn train_dataset(mut self, d: impl Into<DatasetArg>) -> Result<Self> {
        self.train_dataset = Some(batched(
            d.into(),
            self.args.train_batch_size(),
            self.args.dataloader_drop_last,
        )?);
        Ok(self)
    }

    /// Sets the evaluation data.
    pub fn eval_dataset(mut self, d: impl Into<DatasetArg>) -> Result<Self> {
        self.eval_dataset = Some(batched(
            d.into(),
            self.args.per_device_eval_batch_size,
            false,
        )?);
        Ok(self)
    }

    /// Adds a callback.
    pub fn add_callback(&mut self, cb: Box<dyn Callback>) {
        self.callbacks.push(cb);
    }

    /// Removes callbacks by name; returns how many were removed.
    pub fn remove_callback(&mut self, name: &str) -> usize {
        let before = self.callbacks.len();
        self.callbacks.retain(|c| c.name() != name);
        before - self.callbacks.len()
    }

    /// The model being trained.
    pub fn model(&self) -> &dyn CausalLM {
        self.model.as_ref()
    }

    /// The arguments.
    pub fn args(&self) -> &TrainingArguments {
        &self.args
    }

    /// The task name.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// Next-token cross-entropy of a batch (`input_ids` of `seq_length + 1` tokens).
    fn loss(&self, batch: &Batch, train: bool) -> Result<(Tensor, i64)> {
        let ids = batch.get("input_ids")?;
        let (b, l) = ids
            .size2()
            .map_err(|_| invalid("input_ids must be [batch, len]"))?;
        if l < 2 {
            return Err(invalid(
                "input_ids rows need at least 2 tokens (seq_length + 1)",
            ));
        }
        let dev = self.model.device();
        let ids = ids.to_kind(Kind::Int64).to_device(dev);
        let inputs = ids.narrow(1, 0, l - 1);
        let labels = ids.narrow(1, 1, l - 1);
        let logits = self.model.forward(
            &ForwardInput {
                input_ids: Some(&inputs),
                train,
                ..Default::default()
            },
            None,
        )?;
        let v = logits.size()[2];
        let loss = logits
            .reshape([-1, v])
            .to_kind(Kind::Float)
            .cross_entropy_for_logits(&labels.reshape([-1]));
        Ok((loss, b * (l - 1)))
    }

    fn resume_dir(&self) -> Result<Option<PathBuf>> {
        let out = Path::new(&self.args.output_dir);
        match &self.args.resume_from_checkpoint {
            None | Some(ResumeFrom::Latest(false)) => Ok(None),
            Some(ResumeFrom::Latest(true)) => Ok(checkpoint::list(out).pop().map(|(_, p)| p)),
            Some(ResumeFrom::Path(p)) => {
                let p = PathBuf::from(p);
                if !p.is_dir() {
                    return Err(MfError::NotFound(format!(
                        "resume_from_checkpoint: {} does not exist",
                        p.display()
                    )));
                }
                Ok(Some(p))
            }
        }
    }

    /// Trains from scratch, or from the checkpoint `args.resume_from_checkpoint` names.
    pub fn train(&mut self) -> Result<TrainOutput> {
        let data = self
            .train_dataset
            .clone()
            .ok_or_else(|| invalid("no train_dataset given"))?;
        let args = self.args.clone();
        if args.fp16 {
            return Err(invalid(if self.model.device() == tch::Device::Cpu {
                "fp16 training needs CUDA; on CPU train in f32"
            } else {
                "fp16 mixed-precision training (dynamic loss scaling) is not available yet; train in f32"
            }));
        }
        if !self.parallel.is_single_device() {
            return Err(invalid(format!(
                "the parallel layout (data_parallel={}, model_parallel={}, pipeline_stage={}, micro_batch_num={}, \
                 micro_batch_interleave_num={}) needs the parallel runtime, which is not available yet; \
                 train on one device",
                self.parallel.data_parallel,
                self.parallel.model_parallel,
                self.parallel.pipeline_stage,
                self.parallel.micro_batch_num,
                self.parallel.micro_batch_interleave_num
            )));
        }
        if self.recompute.any() {
            return Err(invalid("recompute is not available yet; train without set_recompute_config(recompute/select_recompute)"));
        }
        if args.bf16 {
            return Err(invalid(
                "bf16 mixed-precision training is not available yet; train in f32",
            ));
        }
        let accum = args.gradient_accumulation_steps;
        let per_epoch = data.num_batches();
        if per_epoch < accum {
            return Err(invalid(format!(
                "the training data has {per_epoch} batches per epoch, fewer than gradient_accumulation_steps = {accum}"
            )));
        }
        let steps_per_epoch = per_epoch / accum;
        let total = args
            .max_steps
            .unwrap_or((args.num_train_epochs * steps_per_epoch as f64).ceil() as usize)
            .max(1);
        let schedule = args.schedule(total)?;
        let mut optim = Optimizer::new(
            &args.optim,
            self.model.parameters(),
            args.adam_beta1,
            args.adam_beta2,
            args.adam_epsilon,
            args.weight_decay,
        )?;
        let mut state = TrainerState {
            seed: args.seed,
            ..Default::default()
        };
        if let Some(dir) = self.resume_dir()? {
            state = checkpoint::load_state(&dir)?;
            self.model.load_weights(&SafeTensors::open(&dir)?)?;
            optim.load_state(&SafeTensors::open(dir.join("optimizer.safetensors"))?)?;
            if args.ignore_data_skip {
                state.micro_batches = (state.micro_batches / per_epoch) * per_epoch;
            }
        }
        let out_dir = PathBuf::from(&args.output_dir);
        std::fs::create_dir_all(&out_dir).map_err(|e| MfError::io(&out_dir, e))?;
        let metrics_path = out_dir.join("metrics.jsonl");
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| MfError::io(&metrics_path, e))?;
        let data_seed = args.data_seed.unwrap_or(args.seed);
        let mut order_epoch = u64::MAX;
        let mut order: Vec<usize> = Vec::new();
        let mut step_losses = Vec::new();
        let mut last_checkpoint = None;
        let (mut window_loss, mut window_steps, mut window_tokens, mut window_samples) = (
            Tensor::zeros([], (Kind::Float, self.model.device())),
            0usize,
            0i64,
            0i64,
        );
        let mut window_start = Instant::now();
        // Host-side callbacks run at sink boundaries: the logging interval rounds up to them.
        let log_every = if args.sink_mode {
            args.logging_steps.div_ceil(args.sink_size) * args.sink_size
        } else {
            args.logging_steps
        };
        while state.global_step < total {
            let mut step_loss = Tensor::zeros([], (Kind::Float, self.model.device()));
            for _ in 0..accum {
                let epoch = (state.micro_batches / per_epoch) as u64;
                if epoch != order_epoch {
                    order = data.dataset().order(epoch);
                    if args.shuffle {
                        order = mf_data::dataset::permute(order, data_seed, epoch);
                    }
                    order_epoch = epoch;
                }
                let batch = data.get_in(&order, state.micro_batches % per_epoch)?;
                // Dropout draws from libtorch's global generator: seeding it per micro-batch makes a
                // resumed run draw exactly what the uninterrupted run drew.
                tch::manual_seed(args.seed.wrapping_add(state.micro_batches as u64) as i64);
                let (loss, tokens) = self.loss(&batch, true)?;
                (&loss / accum as f64).backward();
                step_loss += loss.detach() / accum as f64;
                window_tokens += tokens;
                window_samples += batch.size();
                state.micro_batches += 1;
            }
            let grad_norm = if args.use_clip_grad {
                optim.clip_grad_norm(args.max_grad_norm)
            } else {
                optim.grad_norm()
            };
            let lr = schedule.lr(state.global_step);
            let loss_value = step_loss.double_value(&[]);
            if !loss_value.is_finite() || !grad_norm.is_finite() {
                return Err(invalid(format!(
                    "loss became {loss_value} (grad norm {grad_norm}) at step {}; stopped before updating, the last checkpoint is intact. Lower learning_rate or enable use_clip_grad",
                    state.global_step + 1
                )));
            }
            optim.step(lr);
            optim.zero_grad();
            state.global_step += 1;
            state.epoch = state.micro_batches as f64 / per_epoch as f64;
            step_losses.push(loss_value);
            for cb in &mut self.callbacks {
                cb.on_step(state.global_step, total, loss_value);
            }
            window_loss += step_loss;
            window_steps += 1;
            let at_end = state.global_step == total;
            if state.global_step.is_multiple_of(log_every) || at_end {
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let rec = LogRecord {
                    epoch: state.epoch,
                    step: state.global_step,
                    total_steps: total,
                    loss: window_loss.double_value(&[]) / window_steps as f64,
                    lr,
                    grad_norm,
                    step_time_s: secs / window_steps as f64,
                    tokens_per_s: window_tokens as f64 / secs,
                    samples_per_s: window_samples as f64 / secs,
                };
                let line = serde_json::to_value(&rec).map_err(|e| invalid(e.to_string()))?;
                writeln!(metrics, "{line}").map_err(|e| MfError::io(&metrics_path, e))?;
                state.log_history.push(line);
                for cb in &mut self.callbacks {
                    cb.on_log(&rec);
                }
                window_loss = Tensor::zeros([], (Kind::Float, self.model.device()));
                (window_steps, window_tokens, window_samples) = (0, 0, 0);
                window_start = Instant::now();
            }
            let epoch_end = state.micro_batches % per_epoch < accum;
            let save_now = match args.save_strategy.as_str() {
                "steps" => state.global_step.is_multiple_of(args.save_steps) || at_end,
                "epoch" => epoch_end || at_end,
                _ => false,
            };
            if save_now {
                let dir = checkpoint::save(
                    &out_dir,
                    self.model.as_ref(),
                    &optim,
                    &state,
                    args.save_total_limit,
                )?;
                for cb in &mut self.callbacks {
                    cb.on_save(&dir);
                }
                last_checkpoint = Some(dir);
            }
            let eval_now = match args.evaluation_strategy.as_str() {
                "steps" => state
                    .global_step
                    .is_multiple_of(args.eval_steps.unwrap_or(args.logging_steps)),
                "epoch" => epoch_end,
                _ => false,
            };
            if eval_now && self.eval_dataset.is_some() {
                let m = self.evaluate()?;
                let line = serde_json::json!({"step": state.global_step, "eval_loss": m.eval_loss, "perplexity": m.perplexity});
                writeln!(metrics, "{line}").map_err(|e| MfError::io(&metrics_path, e))?;
                let mut stop = false;
                for cb in &mut self.callbacks {
                    stop |= cb.on_evaluate(&m);
                }
                if stop {
                    break;
                }
            }
        }
        Ok(TrainOutput {
            global_step: state.global_step,
            step_losses,
            last_checkpoint,
        })
    }

    /// Loss and perplexity over the evaluation data.
    pub fn evaluate(&mut self) -> Result<EvalMetrics> {
        let data = self
            .eval_dataset
            .clone()
            .ok_or_else(|| invalid("no eval_dataset given"))?;
        let _g = tch::no_grad_guard();
        let order = data.dataset().order(0);
        let (mut total, mut tokens) = (0.0, 0i64);
        for i in 0..data.num_batches() {
            let batch = data.get_in(&order, i)?;
            let (loss, n) = self.loss(&batch, false)?;
            total += loss.double_value(&[]) * n as f64;
            tokens += n;
        }
        if tokens == 0 {
            return Err(invalid("the evaluation data is empty"));
        }
        let eval_loss = total / tokens as f64;
        Ok(EvalMetrics {
            eval_loss,
            perplexity: eval_loss.exp(),
            batches: data.num_batches(),
        })
    }
}
