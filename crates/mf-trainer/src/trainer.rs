//! The `Trainer`: train / evaluate a causal LM or any task head (classification, NER,
//! question answering, masked LM) on named-column datasets, with the loss from the head and
//! checkpoints that resume exactly.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mf_core::checkpoint::SafeTensors;
use mf_core::{invalid, DType, MfError, Result};
use mf_data::{Batch, BatchedDataset, Dataset, QaWindows, TaskData};
use mf_models::{AutoConfig, AutoModel, CausalLM, ForwardInput, TaskModel};
use tch::{Kind, Tensor};

use crate::amp::LossScaler;
use crate::args::{ResumeFrom, TrainingArguments};
use crate::callbacks::{
    Callback, CheckpointMonitor, EvalMetrics, EvalMonitor, LogRecord, LossMonitor, StepInfo,
    TrainBegin, TrainerControl,
};
use crate::checkpoint::{self, TrainerState};
use crate::metrics::{ComputeMetrics, EvalPrediction};
use crate::model::TrainModel;
use crate::optim::Optimizer;
use crate::parallel::{EngineOptions, ParallelConfig, ParallelDriver, RecomputeConfig};
use crate::replica::ReplicaDriver;
pub use crate::tasks::TASKS;
use crate::tasks::{Columns, TrainTask};

/// A dataset handed to the trainer: already batched, or batched by the arguments' batch size.
pub enum DatasetArg {
    /// Used as batched.
    Batched(BatchedDataset),
    /// Batched with `batch_size` / `per_device_*_batch_size`.
    Unbatched(Dataset),
    /// A directory made by `mf data prepare` (memory-mapped token shards).
    Path(PathBuf),
    /// A tokenized task dataset (`mf_data::nlp`), padded per batch.
    Task(TaskData),
}

impl From<TaskData> for DatasetArg {
    fn from(d: TaskData) -> Self {
        DatasetArg::Task(d)
    }
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

/// A model handed to the trainer: an instance, or (MindFormers' `model='gpt2'`) a preset name
/// or a directory with `config.json`, built from its config with random weights seeded by
/// `args.seed` and the head of the task (load pretrained weights with `finetune`).
pub trait IntoModel {
    /// The model, built if needed.
    fn into_model(self, task: TrainTask, args: &TrainingArguments) -> Result<TrainModel>;
}

impl IntoModel for Box<dyn CausalLM> {
    fn into_model(self, _task: TrainTask, _args: &TrainingArguments) -> Result<TrainModel> {
        Ok(TrainModel::Causal(self))
    }
}

impl<M: CausalLM + 'static> IntoModel for Box<M> {
    fn into_model(self, _task: TrainTask, _args: &TrainingArguments) -> Result<TrainModel> {
        Ok(TrainModel::Causal(self))
    }
}

impl IntoModel for Box<dyn TaskModel> {
    fn into_model(self, _task: TrainTask, _args: &TrainingArguments) -> Result<TrainModel> {
        Ok(TrainModel::Head(self))
    }
}

impl IntoModel for mf_models::Bert {
    fn into_model(self, _task: TrainTask, _args: &TrainingArguments) -> Result<TrainModel> {
        Ok(TrainModel::Head(Box::new(self)))
    }
}

impl IntoModel for &str {
    /// A LoRA preset (`gpt2_lora`) builds its base model and attaches the adapters.
    fn into_model(self, task: TrainTask, args: &TrainingArguments) -> Result<TrainModel> {
        let lora = mf_models::lora::preset(self)?;
        let base = lora.as_ref().map_or(self, |p| p.base_model.as_str());
        let config = AutoConfig::from_pretrained(base)?;
        tch::manual_seed(args.seed as i64);
        if task != TrainTask::TextGeneration {
            if lora.is_some() {
                return Err(invalid("LoRA presets are for text_generation"));
            }
            return Ok(TrainModel::Head(AutoModel::from_config_task(
                &config,
                task.head(),
            )?));
        }
        let mut model = AutoModel::from_config(&config)?;
        if let Some(p) = lora {
            mf_models::lora::apply_lora(model.as_mut(), &p.lora)?;
        }
        Ok(TrainModel::Causal(model))
    }
}

impl IntoModel for String {
    fn into_model(self, task: TrainTask, args: &TrainingArguments) -> Result<TrainModel> {
        self.as_str().into_model(task, args)
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
    /// Whether a callback (early stopping) ended training before the last step.
    pub stopped_early: bool,
    /// Where the loss / learning-rate plot was written.
    pub plot: Option<PathBuf>,
}

/// `Trainer(task, model, args, train_dataset, eval_dataset)`.
pub struct Trainer {
    task: TrainTask,
    model: TrainModel,
    /// Question answering: the evaluation windows' examples and offsets.
    eval_qa: Option<QaWindows>,
    args: TrainingArguments,
    train_dataset: Option<BatchedDataset>,
    eval_dataset: Option<BatchedDataset>,
    callbacks: Vec<Box<dyn Callback>>,
    tokenizer: Option<mf_tokenizers::Tokenizer>,
    parallel: ParallelConfig,
    recompute: RecomputeConfig,
    compute_metrics: Option<ComputeMetrics>,
    /// This trainer is one rank of a group started elsewhere (one process per device).
    communicator: Option<Box<dyn mf_core::comm::Communicator>>,
    /// Run even a one-device layout through the parallel runtime.
    parallel_runtime: bool,
}

/// A batch's mean loss, its weight in an average over batches, its token count (for
/// throughput), and (on request) the causal LM's logits with the labels.
struct BatchLoss {
    loss: Tensor,
    weight: i64,
    tokens: i64,
    kept: Option<(Tensor, Tensor)>,
}

/// Real (unpadded) input tokens of a head's batch, for throughput.
fn input_tokens(cols: &[(&'static str, Tensor)], rows: i64) -> i64 {
    cols.iter().find(|(c, _)| *c == "attention_mask").map_or(
        rows * cols
            .first()
            .and_then(|(_, t)| t.size().get(1).copied())
            .unwrap_or(1),
        |(_, t)| t.sum(Kind::Int64).int64_value(&[]),
    )
}

/// How `train_loop` runs a parallel layout.
enum ParallelPlan {
    /// A causal LM on the sharded runtime.
    Sharded(Box<(mf_models::ModelConfig, EngineOptions)>),
    /// A head model as data-parallel replicas.
    Replicas {
        data_parallel: usize,
        opts: mf_parallel::ReplicaOptions,
        gradients_mean: bool,
    },
}

/// The running parallel runtime of a `ParallelPlan`.
enum Driver {
    Sharded(Box<ParallelDriver>),
    Replicas(ReplicaDriver),
}

impl Driver {
    fn is_rank_zero(&self) -> bool {
        match self {
            Driver::Sharded(d) => d.is_rank_zero(),
            Driver::Replicas(d) => d.is_rank_zero(),
        }
    }

    fn optimizer_state_bytes(&self) -> usize {
        match self {
            Driver::Sharded(d) => d.optimizer_state_bytes(),
            Driver::Replicas(d) => d.optimizer_state_bytes(),
        }
    }

    fn load_optimizer(&mut self, tensors: Vec<(String, Tensor)>) -> Result<()> {
        match self {
            Driver::Sharded(d) => d.load_optimizer(tensors),
            Driver::Replicas(d) => d.load_optimizer(tensors),
        }
    }

    fn apply_update(&mut self, lr: f64, clip_coef: f64) -> Result<()> {
        match self {
            Driver::Sharded(d) => d.apply_update(lr, clip_coef),
            Driver::Replicas(d) => d.apply_update(lr, clip_coef),
        }
    }

    fn zero_grad(&mut self) -> Result<()> {
        match self {
            Driver::Sharded(d) => d.zero_grad(),
            Driver::Replicas(d) => d.zero_grad(),
        }
    }

    /// The full weights into `model` (replicas hold them already) and, with `optimizer`, the
    /// whole optimizer state on world rank 0.
    fn gather_into(
        &mut self,
        model: &TrainModel,
        optimizer: bool,
    ) -> Result<Option<Vec<(String, Tensor)>>> {
        match self {
            Driver::Sharded(d) => d.gather_into(model.causal()?, optimizer),
            Driver::Replicas(d) if optimizer => d.optimizer_state(),
            Driver::Replicas(_) => Ok(None),
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            Driver::Sharded(d) => d.finish(),
            Driver::Replicas(d) => d.finish(),
        }
    }
}

fn batched(arg: DatasetArg, batch_size: usize, drop_last: bool) -> Result<BatchedDataset> {
    match arg {
        DatasetArg::Batched(b) => Ok(b),
        DatasetArg::Unbatched(d) => d.batch(batch_size, drop_last),
        DatasetArg::Path(p) => mf_data::shards::open(&p)?.batch(batch_size, drop_last),
        DatasetArg::Task(t) => t.batch(batch_size, drop_last),
    }
}

impl Trainer {
    /// A trainer for `task` over `model` (an instance, or a preset name / config directory).
    /// Installs the default callbacks: `loss_monitor`, `checkpoint` and `evaluation`.
    pub fn new(task: &str, model: impl IntoModel, args: TrainingArguments) -> Result<Self> {
        let task = TrainTask::parse(task)?;
        args.validate()?;
        let model = model.into_model(task, &args)?;
        match (&model, task) {
            (TrainModel::Causal(_), TrainTask::TextGeneration) => {}
            (TrainModel::Head(m), t) if m.task() == t.head() => {}
            (TrainModel::Head(m), t) => {
                return Err(invalid(format!(
                    "{} trains a {} head, but this {} model has a {} head",
                    t.name(),
                    t.head(),
                    m.model_type(),
                    m.task()
                )))
            }
            (TrainModel::Causal(_), t) => {
                return Err(invalid(format!(
                    "{} trains a {} head, not a causal LM; build the model with that head",
                    t.name(),
                    t.head()
                )))
            }
        }
        Ok(Trainer {
            task,
            model,
            eval_qa: None,
            args,
            train_dataset: None,
            eval_dataset: None,
            callbacks: vec![
                Box::new(LossMonitor::new()),
                Box::new(CheckpointMonitor::from_args()),
                Box::new(EvalMonitor::new()),
            ],
            tokenizer: None,
            parallel: ParallelConfig::default(),
            recompute: RecomputeConfig::default(),
            compute_metrics: None,
            communicator: None,
            parallel_runtime: false,
        })
    }

    /// Metrics computed from the evaluation predictions, reported besides loss and perplexity.
    pub fn compute_metrics(
        mut self,
        f: impl Fn(&EvalPrediction) -> Result<std::collections::BTreeMap<String, f64>> + 'static,
    ) -> Self {
        self.compute_metrics = Some(Box::new(f));
        self
    }

    /// Attaches LoRA adapters (MindFormers' `pet_method='lora'`): the base weights freeze and
    /// only the adapters train; checkpoints also hold them in PEFT's layout.
    pub fn lora(mut self, config: &mf_models::LoraConfig) -> Result<Self> {
        mf_models::lora::apply_lora(self.model.causal_mut()?, config)?;
        Ok(self)
    }

    /// Adds a callback (builder style).
    pub fn callback(mut self, cb: impl Callback + 'static) -> Self {
        self.callbacks.push(Box::new(cb));
        self
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

    /// Makes this trainer one rank of a group whose other ranks run their own trainers (in
    /// other processes, e.g. one per GPU under `mf launch` with NCCL): `train` then runs this
    /// rank only, every rank starts from world rank 0's weights, and world rank 0 writes the
    /// checkpoints. Without it, a parallel layout runs all ranks as threads of this process.
    pub fn set_communicator(&mut self, comm: Box<dyn mf_core::comm::Communicator>) {
        self.communicator = Some(comm);
    }

    /// Runs training through the parallel runtime even for one device without recompute
    /// (segment-wise backward, flat optimizer buckets), e.g. to measure the runtime's own cost
    /// against the plain loop; the numbers are the same.
    pub fn use_parallel_runtime(&mut self, on: bool) {
        self.parallel_runtime = on;
    }

    /// The stored parallel layout.
    pub fn parallel_config(&self) -> &ParallelConfig {
        &self.parallel
    }

    /// The stored recompute options.
    pub fn recompute_config(&self) -> &RecomputeConfig {
        &self.recompute
    }

    /// Loads pretrained weights, then trains: `checkpoint` is a `step_N` directory, any
    /// HF-format directory, or a preset name whose weights come from the cache / hub.
    pub fn finetune(&mut self, checkpoint: impl AsRef<Path>) -> Result<TrainOutput> {
        let dir = mf_models::auto::resolve_model_dir(&checkpoint.as_ref().to_string_lossy())?;
        let ckpt = SafeTensors::open(&dir)?;
        match &self.model {
            // A base checkpoint in a new head: the head keeps its fresh initialisation.
            TrainModel::Head(m) => {
                m.load_base_weights(&ckpt)?;
            }
            TrainModel::Causal(m) => m.load_weights(&ckpt)?,
        }
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
        let model = self.model.causal()?;
        let mut cfg = model.generation_config().with(options);
        if let Some(eos) = tok.eos_token_id() {
            if cfg.eos_token_id.is_empty() {
                cfg.eos_token_id = vec![eos];
            }
        }
        let prompts = inputs
            .iter()
            .map(|t| tok.encode_ids(t.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let out = mf_models::generate(model, &prompts, &cfg, None)?;
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
        let d = d.into();
        if let DatasetArg::Task(t) = &d {
            self.eval_qa = t.qa.clone();
        }
        self.eval_dataset = Some(batched(d, self.args.per_device_eval_batch_size, false)?);
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
    pub fn model(&self) -> &TrainModel {
        &self.model
    }

    /// The model being trained, mutably (to load weights before training).
    pub fn model_mut(&mut self) -> &mut TrainModel {
        &mut self.model
    }

    /// The arguments.
    pub fn args(&self) -> &TrainingArguments {
        &self.args
    }

    /// The task name (MindFormers' spelling).
    pub fn task(&self) -> &str {
        self.task.name()
    }

    /// The batch's loss: next-token cross-entropy for a causal LM (over `labels` when the
    /// dataset has them, `-100` ignored: the masked prompt of supervised fine-tuning; else
    /// over `input_ids` of `seq_length + 1` tokens), the head's own loss otherwise.
    fn loss(&self, batch: &Batch, train: bool, keep_logits: bool) -> Result<BatchLoss> {
        let m = match &self.model {
            TrainModel::Causal(m) => m.as_ref(),
            TrainModel::Head(h) => return self.head_loss(h.as_ref(), batch, train),
        };
        let ids = batch.get("input_ids")?;
        let (b, l) = ids
            .size2()
            .map_err(|_| invalid("input_ids must be [batch, len]"))?;
        let dev = m.device();
        let ids = ids.to_kind(Kind::Int64).to_device(dev);
        let has_labels = batch.columns.iter().any(|(n, _)| n == "labels");
        if has_labels {
            let labels = batch.get("labels")?.to_kind(Kind::Int64).to_device(dev);
            if labels.size() != ids.size() {
                return Err(invalid(format!(
                    "labels are {:?} but input_ids {:?}: a text_generation labels column holds one id (or -100) per input token",
                    labels.size(),
                    ids.size()
                )));
            }
            let mask = batch
                .columns
                .iter()
                .find(|(n, _)| n == "attention_mask")
                .map(|(_, t)| t.to_kind(Kind::Int64).to_device(dev));
            let input = ForwardInput {
                input_ids: Some(&ids),
                attention_mask: mask.as_ref(),
                train,
                ..Default::default()
            };
            let counted = labels
                .narrow(1, 1, l - 1)
                .ne(-100)
                .sum(Kind::Int64)
                .int64_value(&[]);
            let (loss, kept) = if keep_logits {
                let logits = m.forward(&input, None)?;
                let loss = mf_models::task::causal_lm_loss(&logits, &labels)?;
                (
                    loss,
                    Some((logits.narrow(1, 0, l - 1), labels.narrow(1, 1, l - 1))),
                )
            } else {
                // Position i predicts labels[i + 1]; the last position predicts nothing.
                let targets = Tensor::cat(
                    &[
                        labels.narrow(1, 1, l - 1),
                        Tensor::full([b, 1], -100, (Kind::Int64, dev)),
                    ],
                    1,
                );
                (m.next_token_loss(&input, &targets)?, None)
            };
            return Ok(BatchLoss {
                loss,
                weight: counted,
                tokens: b * l,
                kept,
            });
        }
        if l < 2 {
            return Err(invalid(
                "input_ids rows need at least 2 tokens (seq_length + 1)",
            ));
        }
        let inputs = ids.narrow(1, 0, l - 1);
        let labels = ids.narrow(1, 1, l - 1);
        let input = ForwardInput {
            input_ids: Some(&inputs),
            train,
            ..Default::default()
        };
        let (loss, kept) = if keep_logits {
            let logits = m.forward(&input, None)?;
            let v = logits.size()[2];
            let loss = logits
                .reshape([-1, v])
                .to_kind(Kind::Float)
                .cross_entropy_for_logits(&labels.reshape([-1]));
            (loss, Some((logits, labels)))
        } else {
            (m.next_token_loss(&input, &labels)?, None)
        };
        Ok(BatchLoss {
            loss,
            weight: b * (l - 1),
            tokens: b * (l - 1),
            kept,
        })
    }

    /// The inputs a head reads from a batch (masked-LM masking drawn here).
    fn head_inputs(&self, m: &dyn TaskModel, batch: &Batch) -> Result<Vec<(&'static str, Tensor)>> {
        let dev = m.device();
        let col = |n: &str| -> Option<Tensor> {
            batch
                .columns
                .iter()
                .find(|(c, _)| c == n)
                .map(|(_, t)| t.to_device(dev))
        };
        let mut v = Vec::new();
        let ids = col("input_ids").ok_or_else(|| invalid("the dataset has no input_ids column"))?;
        if self.task == TrainTask::FillMask {
            let tok = self.tokenizer.as_ref().ok_or_else(|| {
                invalid(
                    "fill_mask training needs the tokenizer for its mask token: .tokenizer(tok)",
                )
            })?;
            let mask_id = tok
                .mask_token_id()
                .ok_or_else(|| invalid("the tokenizer has no mask token"))?;
            let special = col("special_tokens_mask").ok_or_else(|| {
                invalid(
                    "fill_mask data needs a special_tokens_mask column (mf_data::nlp::masked_lm)",
                )
            })?;
            let (masked, labels) = crate::tasks::mask_tokens(
                &ids,
                &special,
                mask_id as i64,
                m.vocab_size() as i64,
                0.15,
            )?;
            v.push(("input_ids", masked));
            v.push(("labels", labels));
        } else {
            v.push(("input_ids", ids));
            for n in ["labels", "start_positions", "end_positions"] {
                if let Some(t) = col(n) {
                    // Per-sample targets arrive as [batch, 1] columns and the heads take
                    // [batch]: QA positions and single-label class ids. Multi-label targets
                    // (floats) and per-token labels keep their shape.
                    let per_sample = n != "labels"
                        || (self.task == TrainTask::TextClassification && t.kind() == Kind::Int64);
                    let t = if per_sample && t.dim() == 2 && t.size()[1] == 1 {
                        t.reshape([-1])
                    } else {
                        t
                    };
                    v.push((n, t));
                }
            }
        }
        for n in ["attention_mask", "token_type_ids"] {
            if n == "token_type_ids" && !m.uses_token_type_ids() {
                continue;
            }
            if let Some(t) = col(n) {
                v.push((n, t));
            }
        }
        Ok(v)
    }

    fn head_forward(
        &self,
        m: &dyn TaskModel,
        batch: &Batch,
        train: bool,
    ) -> Result<(mf_models::ModelOutput, Columns)> {
        let cols = self.head_inputs(m, batch)?;
        let out = crate::tasks::forward_columns(m, &cols, train)?;
        Ok((out, cols))
    }

    fn head_loss(&self, m: &dyn TaskModel, batch: &Batch, train: bool) -> Result<BatchLoss> {
        let (out, cols) = self.head_forward(m, batch, train)?;
        let loss = out.loss()?.shallow_clone();
        Ok(BatchLoss {
            loss,
            weight: crate::tasks::loss_count(self.task, m, &cols),
            tokens: input_tokens(&cols, batch.size()),
            kept: None,
        })
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

    /// Trains from scratch, or from the checkpoint `args.resume_from_checkpoint` names, and
    /// draws the loss / learning-rate curve to `output_dir/loss_curve.png`.
    pub fn train(&mut self) -> Result<TrainOutput> {
        let data = self
            .train_dataset
            .clone()
            .ok_or_else(|| invalid("no train_dataset given"))?;
        let args = self.args.clone();
        if !self.parallel.is_single_device()
            || self.recompute.any()
            || self.communicator.is_some()
            || self.parallel_runtime
        {
            return self.train_parallel(&data, &args);
        }
        let precision = if args.bf16 {
            Some(DType::BF16)
        } else if args.fp16 {
            Some(DType::F16)
        } else {
            None
        };
        let Some(precision) = precision else {
            return self.train_loop(&data, &args, &mut None, None);
        };
        let device = mf_core::Device::from_tch(self.model.device())?;
        let original = self
            .model
            .parameters()
            .first()
            .and_then(|(_, t)| DType::from_kind(t.kind()))
            .unwrap_or_default();
        self.model.to(device, precision)?;
        let mut optim = None;
        let result = self.train_loop(&data, &args, &mut optim, None);
        // The model leaves train() in its own dtype holding the f32 master values, as under
        // autocast, whether training finished or failed.
        let restored = self.model.to(device, original);
        if let Some(o) = &optim {
            o.copy_masters_to_model();
        }
        restored?;
        result
    }

    /// Training over the parallel layout and recompute options set on this trainer: the
    /// ranks are threads of this process (the threads backend, rank 0 on this thread), or,
    /// with a communicator (`set_communicator`, or NCCL from `init_context`), this trainer is
    /// one rank of a group of processes.
    fn train_parallel(
        &mut self,
        data: &BatchedDataset,
        args: &TrainingArguments,
    ) -> Result<TrainOutput> {
        if args.bf16 || args.fp16 {
            return Err(invalid(
                "bf16/fp16 training with a parallel layout or recompute is not supported yet; train in f32 or on one device",
            ));
        }
        if let TrainModel::Head(m) = &self.model {
            self.check_replica_layout(m.model_type())?;
        }
        if self.model.has_lora() {
            return Err(invalid(
                "LoRA fine-tuning with a parallel layout or recompute is not supported yet; train the adapters on one device",
            ));
        }
        if self.communicator.is_none() && self.model.device() != tch::Device::Cpu {
            return Err(invalid(
                "the threads backend runs on the CPU; for GPUs start one process per device with `mf launch` and give each trainer its rank's communicator (init_context / set_communicator)",
            ));
        }
        // init_context's settings, when it was called: the layout must fit its parallel mode
        // and device count; under NCCL (one process per device) this trainer is its rank.
        let ctx = mf_core::context::current();
        let mut gradients_mean = true;
        let mut optimizer_shard = self.parallel.optimizer_shard;
        if let Some(c) = &ctx {
            let p = &self.parallel;
            c.check_layout(p.data_parallel, p.model_parallel, p.pipeline_stage)?;
            // DATA_PARALLEL sums per-rank gradients unless gradients_mean; the semi-auto modes
            // train the global batch as one device would.
            if c.parallel.parallel_mode == mf_core::context::ParallelMode::DataParallel {
                gradients_mean = c.parallel.gradients_mean;
            }
            optimizer_shard |= c.parallel.enable_parallel_optimizer;
            if !c.parallel.full_batch && p.data_parallel > 1 {
                return Err(invalid(
                    "full_batch = false (each rank reads its own dataset shard) is not supported: the runtime reads the global batch once and gives each data-parallel rank its rows; set full_batch = true with the global batch size",
                ));
            }
            if c.backend == mf_core::context::Backend::Nccl && self.communicator.is_none() {
                self.communicator = mf_core::context::take_process_comm();
            }
        }
        let optimizer = mf_parallel::optim::OptimizerOptions {
            optim: args.optim.clone(),
            beta1: args.adam_beta1,
            beta2: args.adam_beta2,
            eps: args.adam_epsilon,
            weight_decay: args.weight_decay,
        };
        if let TrainModel::Head(_) = &self.model {
            let plan = ParallelPlan::Replicas {
                data_parallel: self.parallel.data_parallel,
                opts: mf_parallel::ReplicaOptions {
                    optimizer,
                    optimizer_shard,
                },
                gradients_mean,
            };
            return self.train_loop(data, args, &mut None, Some(plan));
        }
        let config = self.model.causal()?.model_config().ok_or_else(|| {
            invalid(
                "this model family does not support parallel training yet; train it on one device",
            )
        })?;
        self.parallel
            .validate_for(&config, None, data.batch_size())?;
        let mut parallel = self.parallel.clone();
        parallel.optimizer_shard = optimizer_shard;
        let opts = EngineOptions {
            parallel,
            recompute: self.recompute.clone(),
            optimizer,
            gradients_mean,
            seed: args.seed,
            broadcast_init: false,
        };
        self.train_loop(
            data,
            args,
            &mut None,
            Some(ParallelPlan::Sharded(Box::new((config, opts)))),
        )
    }

    /// Head models train data-parallel as full replicas (`replica`); every other layout is
    /// refused by name rather than run differently from what was asked.
    fn check_replica_layout(&self, model_type: &str) -> Result<()> {
        let p = &self.parallel;
        let r = &self.recompute;
        let unsupported = [
            (
                p.model_parallel > 1,
                format!("model_parallel = {}", p.model_parallel),
            ),
            (
                p.pipeline_stage > 1,
                format!("pipeline_stage = {}", p.pipeline_stage),
            ),
            (
                p.micro_batch_num > 1,
                format!("micro_batch_num = {}", p.micro_batch_num),
            ),
            (
                p.micro_batch_interleave_num > 1,
                format!(
                    "micro_batch_interleave_num = {}",
                    p.micro_batch_interleave_num
                ),
            ),
            (p.use_seq_parallel, "use_seq_parallel".to_string()),
            (r.recompute, "recompute".to_string()),
            (r.select_recompute, "select_recompute".to_string()),
        ];
        let asked: Vec<String> = unsupported
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, what)| what)
            .collect();
        if asked.is_empty() {
            return Ok(());
        }
        Err(invalid(format!(
            "{} is not supported for {model_type} heads ({}): the parallel runtime trains data_parallel and optimizer_shard only for {model_type} heads until tensor, pipeline and sequence parallelism and recompute cover every model family; use data_parallel (with optimizer_shard if wanted) alone",
            asked.join(", "),
            self.task.name()
        )))
    }

    fn train_loop(
        &mut self,
        data: &BatchedDataset,
        args: &TrainingArguments,
        optim_slot: &mut Option<Optimizer>,
        parallel: Option<ParallelPlan>,
    ) -> Result<TrainOutput> {
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
        let mixed = args.bf16 || args.fp16;
        let build = if mixed {
            Optimizer::with_master_weights
        } else {
            Optimizer::new
        };
        let lora = self.model.has_lora();
        let trainable = if lora {
            mf_models::lora::lora_parameters(self.model.causal_mut()?)
        } else {
            self.model.parameters()
        };
        let trainable_parameters: usize = trainable.iter().map(|(_, t)| t.numel()).sum();
        // The parallel runtime keeps its own (sharded) optimizer state: this one stays empty.
        let trainable = if parallel.is_some() {
            Vec::new()
        } else {
            trainable
        };
        let optim = optim_slot.insert(build(
            &args.optim,
            trainable,
            args.adam_beta1,
            args.adam_beta2,
            args.adam_epsilon,
            args.weight_decay,
        )?);
        let mut state = TrainerState {
            seed: args.seed,
            loss_scaler: args.fp16.then(|| LossScaler::from_args(args)),
            ..Default::default()
        };
        let mut resumed_optimizer = None;
        if let Some(dir) = self.resume_dir()? {
            state = checkpoint::load_state(&dir)?;
            self.model.load_weights(&SafeTensors::open(&dir)?)?;
            if lora {
                mf_models::lora::load_adapter_weights(self.model.causal_mut()?, &dir)?;
            }
            let opt_file = SafeTensors::open(dir.join("optimizer.safetensors"))?;
            if parallel.is_some() {
                resumed_optimizer = Some(
                    opt_file
                        .names()
                        .map(|n| Ok((n.to_string(), opt_file.get(n)?)))
                        .collect::<Result<Vec<_>>>()?,
                );
            } else {
                optim.load_state(&opt_file)?;
            }
            if !args.fp16 {
                state.loss_scaler = None;
            } else if state.loss_scaler.is_none() {
                state.loss_scaler = Some(LossScaler::from_args(args));
            }
            if args.ignore_data_skip {
                state.micro_batches = (state.micro_batches / per_epoch) * per_epoch;
            }
        }
        let mut driver = match parallel {
            Some(ParallelPlan::Sharded(plan)) => {
                let (config, opts) = *plan;
                Some(Driver::Sharded(Box::new(match self.communicator.take() {
                    Some(comm) => {
                        ParallelDriver::join_group(comm, self.model.causal()?, &config, opts)?
                    }
                    None => ParallelDriver::start(self.model.causal()?, &config, opts)?,
                })))
            }
            Some(ParallelPlan::Replicas {
                data_parallel,
                opts,
                gradients_mean,
            }) => {
                let m = self.model.head()?;
                Some(Driver::Replicas(match self.communicator.take() {
                    Some(comm) => {
                        ReplicaDriver::join_group(comm, m, data_parallel, opts, gradients_mean)?
                    }
                    None => ReplicaDriver::start(m, data_parallel, opts, gradients_mean)?,
                }))
            }
            None => None,
        };
        if let (Some(d), Some(t)) = (driver.as_mut(), resumed_optimizer.take()) {
            d.load_optimizer(t)?;
        }
        let out_dir = PathBuf::from(&args.output_dir);
        std::fs::create_dir_all(&out_dir).map_err(|e| MfError::io(&out_dir, e))?;
        // With one process per rank, only world rank 0 writes the shared output files.
        let writer = driver.as_ref().is_none_or(|d| d.is_rank_zero());
        let metrics_path = out_dir.join("metrics.jsonl");
        let mut metrics: Box<dyn Write> = if writer {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&metrics_path)
                    .map_err(|e| MfError::io(&metrics_path, e))?,
            )
        } else {
            Box::new(std::io::sink())
        };
        let compute_kind = self
            .model
            .parameters()
            .first()
            .map_or(Kind::Float, |(_, t)| t.kind());
        let peak = crate::flops::matmul_peak_flops(self.model.device(), compute_kind);
        let n_params = self.model.num_parameters();
        let matmul_params = self.model.matmul_parameters();
        let begin = TrainBegin {
            args,
            total_steps: total,
            start_step: state.global_step,
            has_eval_dataset: self.eval_dataset.is_some(),
            trainable_parameters,
            total_parameters: n_params + if lora { trainable_parameters } else { 0 },
            optimizer_state_bytes: driver
                .as_ref()
                .map_or_else(|| optim.state_bytes(), Driver::optimizer_state_bytes),
        };
        for cb in &mut self.callbacks {
            cb.on_train_begin(&begin)?;
        }
        let data_seed = args.data_seed.unwrap_or(args.seed);
        let mut order_epoch = u64::MAX;
        let mut order: Vec<usize> = Vec::new();
        let mut step_losses = Vec::new();
        let mut last_checkpoint = None;
        let mut stopped_early = false;
        let (mut window_loss, mut window_finite, mut window_steps) = (0.0f64, 0usize, 0usize);
        let (mut window_tokens, mut window_samples) = (0i64, 0i64);
        let mut window_start = Instant::now();
        // Host-side callbacks run at sink boundaries: the logging interval rounds up to them.
        let log_every = if args.sink_mode {
            args.logging_steps.div_ceil(args.sink_size) * args.sink_size
        } else {
            args.logging_steps
        };
        while state.global_step < total {
            let scale = state.loss_scaler.as_ref().map_or(1.0, |s| s.scale);
            let mut step_loss = Tensor::zeros([], (Kind::Float, self.model.device()));
            let mut step_loss_ranks = 0.0;
            for micro in 0..accum {
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
                if let Some(Driver::Replicas(d)) = driver.as_mut() {
                    // The masks of masked-LM drawn on the whole batch, before it is split, are
                    // the masks one device draws.
                    tch::manual_seed(args.seed.wrapping_add(state.micro_batches as u64) as i64);
                    let m = self.model.head()?;
                    let cols = self.head_inputs(m, &batch)?;
                    let task = self.task;
                    d.forward_backward(
                        m,
                        &cols,
                        |c| crate::tasks::loss_count(task, m, c),
                        1.0 / accum as f64,
                    )?;
                    window_tokens += input_tokens(&cols, batch.size());
                    window_samples += batch.size();
                    state.micro_batches += 1;
                    continue;
                }
                if let Some(Driver::Sharded(d)) = driver.as_mut() {
                    let ids = batch.get("input_ids")?;
                    let (b, l) = ids
                        .size2()
                        .map_err(|_| invalid("input_ids must be [batch, len]"))?;
                    let loss = d.forward_backward(
                        ids,
                        1.0 / accum as f64,
                        micro + 1 == accum,
                        state.micro_batches as u64,
                    )?;
                    step_loss_ranks += loss / accum as f64;
                    window_tokens += b * (l - 1);
                    window_samples += batch.size();
                    state.micro_batches += 1;
                    continue;
                }
                tch::manual_seed(args.seed.wrapping_add(state.micro_batches as u64) as i64);
                let BatchLoss { loss, tokens, .. } = self.loss(&batch, true, false)?;
                (&loss * (scale / accum as f64)).backward();
                step_loss += loss.detach() / accum as f64;
                window_tokens += tokens;
                window_samples += batch.size();
                state.micro_batches += 1;
            }
            optim.set_grad_scale(scale);
            let grad_norm = match driver.as_mut() {
                Some(Driver::Sharded(d)) => d.reduce_gradients()?,
                Some(Driver::Replicas(d)) => {
                    let (loss, norm) = d.reduce_gradients()?;
                    step_loss_ranks = loss;
                    norm
                }
                None => optim.grad_norm(),
            };
            let loss_value = step_loss.double_value(&[]) + step_loss_ranks;
            let finite = loss_value.is_finite() && grad_norm.is_finite();
            let applied = match &mut state.loss_scaler {
                Some(scaler) => scaler.update(finite),
                None if finite => true,
                None => {
                    return Err(invalid(format!(
                        "loss became {loss_value} (grad norm {grad_norm}) at step {}; stopped before updating, the last checkpoint is intact. Lower learning_rate or enable use_clip_grad",
                        state.global_step + 1
                    )))
                }
            };
            let lr = schedule.lr(state.global_step);
            if let Some(d) = driver.as_mut() {
                if applied {
                    let coef = if args.use_clip_grad {
                        args.max_grad_norm / (grad_norm + 1e-6)
                    } else {
                        1.0
                    };
                    d.apply_update(lr, coef)?;
                } else {
                    d.zero_grad()?;
                }
            } else {
                if applied {
                    if args.use_clip_grad {
                        optim.clip_to(grad_norm, args.max_grad_norm);
                    }
                    optim.step(lr);
                }
                optim.zero_grad();
            }
            state.global_step += 1;
            state.epoch = state.micro_batches as f64 / per_epoch as f64;
            step_losses.push(loss_value);
            let info = StepInfo {
                step: state.global_step,
                total_steps: total,
                epoch: state.epoch,
                epoch_end: state.micro_batches % per_epoch < accum,
                loss: loss_value,
                applied,
            };
            let mut control = TrainerControl::default();
            for cb in &mut self.callbacks {
                cb.on_step_end(&info, &mut control);
            }
            if loss_value.is_finite() {
                window_loss += loss_value;
                window_finite += 1;
            }
            window_steps += 1;
            let at_end = state.global_step == total;
            if state.global_step.is_multiple_of(log_every) || at_end {
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let tokens_per_s = window_tokens as f64 / secs;
                let rec = LogRecord {
                    epoch: state.epoch,
                    step: state.global_step,
                    total_steps: total,
                    loss: window_loss / window_finite.max(1) as f64,
                    lr,
                    grad_norm,
                    step_time_s: secs / window_steps as f64,
                    tokens_per_s,
                    samples_per_s: window_samples as f64 / secs,
                    mfu: crate::flops::mfu(matmul_params, tokens_per_s, peak),
                    loss_scale: state.loss_scaler.as_ref().map(|s| s.scale),
                };
                let line = serde_json::to_value(&rec).map_err(|e| invalid(e.to_string()))?;
                writeln!(metrics, "{line}").map_err(|e| MfError::io(&metrics_path, e))?;
                state.log_history.push(line);
                for cb in &mut self.callbacks {
                    cb.on_log(&rec);
                }
                (window_loss, window_finite, window_steps) = (0.0, 0, 0);
                (window_tokens, window_samples) = (0, 0);
                window_start = Instant::now();
            }
            if control.should_save {
                // Every rank takes part in the gather; world rank 0 writes.
                let opt_state = match driver.as_mut() {
                    Some(d) => d.gather_into(&self.model, true)?,
                    None => Some(optim.state_tensors()),
                };
                if let Some(opt_state) = opt_state {
                    let dir = checkpoint::save(
                        &out_dir,
                        &mut self.model,
                        &opt_state,
                        &state,
                        args.save_total_limit,
                    )?;
                    for cb in &mut self.callbacks {
                        cb.on_save(&dir);
                    }
                    last_checkpoint = Some(dir);
                }
            }
            if control.should_evaluate {
                if let Some(d) = driver.as_mut() {
                    d.gather_into(&self.model, false)?;
                }
                let m = self.evaluate()?;
                let mut line = serde_json::json!({"step": state.global_step, "eval_loss": m.eval_loss, "perplexity": m.perplexity});
                for (k, v) in &m.metrics {
                    line[k] = serde_json::json!(v);
                }
                writeln!(metrics, "{line}").map_err(|e| MfError::io(&metrics_path, e))?;
                for cb in &mut self.callbacks {
                    cb.on_evaluate(state.global_step, &m, &mut control)?;
                }
            }
            if control.should_stop && !at_end {
                stopped_early = true;
                break;
            }
        }
        if let Some(mut d) = driver.take() {
            d.gather_into(&self.model, false)?;
            d.finish()?;
        }
        for cb in &mut self.callbacks {
            cb.on_train_end(state.global_step);
        }
        drop(metrics);
        let curves = if writer {
            crate::plot::Curves::read(&metrics_path)?
        } else {
            Default::default()
        };
        let plot = crate::plot::loss_curve(&curves, &out_dir)?;
        Ok(TrainOutput {
            global_step: state.global_step,
            step_losses,
            last_checkpoint,
            stopped_early,
            plot,
        })
    }

    /// Loss and perplexity over the evaluation data, the task's metrics (accuracy; entity
    /// precision / recall / F1; SQuAD exact match / F1), plus `compute_metrics` if set.
    pub fn evaluate(&mut self) -> Result<EvalMetrics> {
        let data = self
            .eval_dataset
            .clone()
            .ok_or_else(|| invalid("no eval_dataset given"))?;
        let _g = tch::no_grad_guard();
        if let TrainModel::Head(m) = &self.model {
            return self.evaluate_head(m.as_ref(), &data);
        }
        let order = data.dataset().order(0);
        let (mut total, mut tokens) = (0.0, 0i64);
        let keep = self.compute_metrics.is_some();
        let (mut preds, mut labels) = (Vec::new(), Vec::new());
        for i in 0..data.num_batches() {
            let batch = data.get_in(&order, i)?;
            let BatchLoss {
                loss,
                weight: n,
                kept,
                ..
            } = self.loss(&batch, false, keep)?;
            total += loss.double_value(&[]) * n as f64;
            tokens += n;
            if let Some((logits, l)) = kept {
                preds.push(logits.argmax(-1, false).to_device(tch::Device::Cpu));
                labels.push(l.to_device(tch::Device::Cpu));
            }
        }
        if tokens == 0 {
            return Err(invalid("the evaluation data is empty"));
        }
        let eval_loss = total / tokens as f64;
        let metrics = match &self.compute_metrics {
            Some(f) => {
                let cat = |v: &[Tensor]| {
                    Tensor::f_cat(v, 0).map_err(|e| {
                        invalid(format!(
                            "compute_metrics needs evaluation batches of one sequence length: {e}"
                        ))
                    })
                };
                f(&EvalPrediction {
                    predictions: cat(&preds)?,
                    label_ids: cat(&labels)?,
                })?
            }
            None => Default::default(),
        };
        Ok(EvalMetrics {
            eval_loss,
            perplexity: eval_loss.exp(),
            batches: data.num_batches(),
            metrics,
        })
    }

    fn evaluate_head(&self, m: &dyn TaskModel, data: &BatchedDataset) -> Result<EvalMetrics> {
        let order = data.dataset().order(0);
        let (mut total, mut weight) = (0.0, 0i64);
        let (mut hits, mut seen) = (0i64, 0i64);
        let (mut pred_tags, mut gold_tags) = (Vec::new(), Vec::new());
        let labels = m.id2label();
        // Question answering: the best span of each example over its windows.
        let mut best: std::collections::BTreeMap<usize, (f32, usize, usize)> = Default::default();
        let mut record = 0usize;
        for i in 0..data.num_batches() {
            let batch = data.get_in(&order, i)?;
            // Masked-LM evaluation draws its masks from a fixed seed per batch.
            tch::manual_seed(self.args.seed.wrapping_add(i as u64) as i64);
            let (out, cols) = self.head_forward(m, &batch, false)?;
            let get = |n: &str| {
                cols.iter()
                    .find(|(c, _)| *c == n)
                    .map(|(_, t)| t.shallow_clone())
            };
            let b = batch.size();
            let loss = out.loss()?.double_value(&[]);
            let w = match self.task {
                TrainTask::TokenClassification | TrainTask::FillMask => {
                    get("labels").map_or(b, |t| t.ne(-100).sum(Kind::Int64).int64_value(&[]))
                }
                _ => b,
            };
            total += loss * w as f64;
            weight += w;
            match self.task {
                TrainTask::TextClassification => {
                    let logits = out.logits()?;
                    let gold = get("labels").ok_or_else(|| invalid("no labels to score"))?;
                    let (h, n) = if m.multi_label() {
                        let pred = logits.gt(0.0);
                        (
                            pred.eq_tensor(&gold.gt(0.5))
                                .sum(Kind::Int64)
                                .int64_value(&[]),
                            gold.numel() as i64,
                        )
                    } else {
                        (
                            logits
                                .argmax(-1, false)
                                .eq_tensor(&gold.reshape([-1]))
                                .sum(Kind::Int64)
                                .int64_value(&[]),
                            b,
                        )
                    };
                    hits += h;
                    seen += n;
                }
                TrainTask::TokenClassification => {
                    let pred = Vec::<i64>::try_from(
                        out.logits()?
                            .argmax(-1, false)
                            .reshape([-1])
                            .to_device(tch::Device::Cpu),
                    )?;
                    let gold_t = get("labels").ok_or_else(|| invalid("no labels to score"))?;
                    let t = gold_t.size()[1] as usize;
                    let gold =
                        Vec::<i64>::try_from(gold_t.reshape([-1]).to_device(tch::Device::Cpu))?;
                    let name = |i: i64| {
                        labels
                            .get(i as usize)
                            .cloned()
                            .unwrap_or_else(|| format!("LABEL_{i}"))
                    };
                    for r in 0..b as usize {
                        let (mut p, mut g) = (Vec::new(), Vec::new());
                        for k in 0..t {
                            let gi = gold[r * t + k];
                            if gi != -100 {
                                p.push(name(pred[r * t + k]));
                                g.push(name(gi));
                            }
                        }
                        pred_tags.push(p);
                        gold_tags.push(g);
                    }
                }
                TrainTask::QuestionAnswering => {
                    let qa = self.eval_qa.as_ref().ok_or_else(|| {
                        invalid("question_answering evaluation needs the eval data from mf_data::nlp::question_answering")
                    })?;
                    let s = out
                        .start_logits
                        .as_ref()
                        .ok_or_else(|| invalid("no start logits"))?;
                    let e = out
                        .end_logits
                        .as_ref()
                        .ok_or_else(|| invalid("no end logits"))?;
                    let t = s.size()[1] as usize;
                    let s = Vec::<f32>::try_from(
                        s.to_kind(Kind::Float)
                            .reshape([-1])
                            .to_device(tch::Device::Cpu),
                    )?;
                    let e = Vec::<f32>::try_from(
                        e.to_kind(Kind::Float)
                            .reshape([-1])
                            .to_device(tch::Device::Cpu),
                    )?;
                    for r in 0..b as usize {
                        let (example, offsets) =
                            qa.windows.get(order[record + r]).ok_or_else(|| {
                                invalid(
                                    "the question-answering windows do not match the eval dataset",
                                )
                            })?;
                        for a in 0..offsets.len().min(t) {
                            let Some((cs, _)) = offsets[a] else { continue };
                            for z in a..offsets.len().min(t).min(a + 30) {
                                let Some((_, ce)) = offsets[z] else { continue };
                                let score = s[r * t + a] + e[r * t + z];
                                if best.get(example).is_none_or(|b| score > b.0) {
                                    best.insert(*example, (score, cs, ce));
                                }
                            }
                        }
                    }
                }
                TrainTask::FillMask | TrainTask::TextGeneration => {}
            }
            record += b as usize;
        }
        if weight == 0 {
            return Err(invalid("the evaluation data is empty"));
        }
        let eval_loss = total / weight as f64;
        let mut metrics = std::collections::BTreeMap::new();
        match self.task {
            TrainTask::TextClassification => {
                metrics.insert("accuracy".to_string(), hits as f64 / seen.max(1) as f64);
            }
            TrainTask::TokenClassification => {
                let (p, r, f) = crate::tasks::entity_prf(&pred_tags, &gold_tags);
                metrics.insert("precision".to_string(), p);
                metrics.insert("recall".to_string(), r);
                metrics.insert("f1".to_string(), f);
            }
            TrainTask::QuestionAnswering => {
                let qa = self
                    .eval_qa
                    .as_ref()
                    .ok_or_else(|| invalid("no question-answering examples"))?;
                let (mut em, mut f1) = (0.0, 0.0);
                for (i, (ctx, golds)) in qa.examples.iter().enumerate() {
                    let pred = best.get(&i).map_or(String::new(), |(_, s, e)| {
                        ctx.chars().skip(*s).take(e - s).collect()
                    });
                    let (a, b) = crate::tasks::squad_em_f1(&pred, golds);
                    em += a;
                    f1 += b;
                }
                let n = qa.examples.len().max(1) as f64;
                metrics.insert("exact_match".to_string(), em / n);
                metrics.insert("f1".to_string(), f1 / n);
            }
            _ => {}
        }
        Ok(EvalMetrics {
            eval_loss,
            perplexity: eval_loss.exp(),
            batches: data.num_batches(),
            metrics,
        })
    }
}
