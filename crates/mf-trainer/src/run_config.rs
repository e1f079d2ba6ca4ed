//! MindFormers' run configs (`run_gpt2.yaml` and friends) in TOML, for `mf run`, the
//! counterpart of `run_mindformer.py`: the same sections and keys, `base_config` inheritance,
//! and `--set section.key=value` overrides.
use std::path::{Path, PathBuf};

use mf_core::{invalid, MfError, Result};
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::args::{ResumeFrom, TrainingArguments};
use crate::parallel::{ParallelConfig, RecomputeConfig};
use crate::tasks::TrainTask;

/// The whole run: MindFormers' top-level keys and sections. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Seed for initialisation, dropout and data order.
    #[serde(default)]
    pub seed: u64,
    /// train, finetune, eval or predict (`--run-mode` overrides it).
    #[serde(default = "default_run_mode")]
    pub run_mode: String,
    /// Where checkpoints, metrics and the plot go.
    #[serde(default = "default_output_dir")]
    pub output_dir: String,
    /// Weights to start from: a checkpoint directory, an HF directory or a preset name.
    #[serde(default)]
    pub load_checkpoint: String,
    /// Continue the newest checkpoint in `output_dir` (or `load_checkpoint` when it is one).
    #[serde(default)]
    pub resume_training: bool,
    /// Evaluate while training (needs `eval_dataset`).
    #[serde(default)]
    pub do_eval: bool,
    /// Evaluate every this many steps when `do_eval` (MindFormers' `eval_step_interval`);
    /// `-1` evaluates at each epoch's end instead.
    #[serde(default = "default_eval_interval")]
    pub eval_step_interval: i64,
    /// Run on several ranks (MindFormers' `use_parallel`): `init_context` sets up the
    /// `parallel` section's mode; on the CPU the ranks are threads of this process.
    #[serde(default)]
    pub use_parallel: bool,
    /// The task and the preset the model starts from.
    pub trainer: TrainerSection,
    /// Device placement.
    #[serde(default)]
    pub context: ContextSection,
    /// Parallel mode.
    #[serde(default)]
    pub parallel: ParallelSection,
    /// Epochs, batch size, sink mode.
    #[serde(default)]
    pub runner_config: RunnerConfig,
    /// `set_parallel_config` arguments.
    #[serde(default)]
    pub parallel_config: ParallelConfig,
    /// `set_recompute_config` arguments.
    #[serde(default)]
    pub recompute_config: RecomputeConfig,
    /// The model: `model_config` keys override the preset's.
    #[serde(default)]
    pub model: ModelSection,
    /// The tokenizer.
    #[serde(default)]
    pub processor: ProcessorSection,
    /// Training data.
    #[serde(default)]
    pub train_dataset: Option<DatasetSection>,
    /// Evaluation data.
    #[serde(default)]
    pub eval_dataset: Option<DatasetSection>,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: OptimizerSection,
    /// The learning-rate schedule.
    #[serde(default)]
    pub lr_schedule: LrScheduleSection,
    /// Callbacks, in order.
    #[serde(default)]
    pub callbacks: Vec<CallbackSection>,
    /// The evaluation metric.
    #[serde(default)]
    pub metric: Option<MetricSection>,
}

fn default_run_mode() -> String {
    "train".into()
}
fn default_output_dir() -> String {
    "./output".into()
}
fn default_eval_interval() -> i64 {
    100
}

/// `trainer: {type: CausalLanguageModelingTrainer, model_name: gpt2}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerSection {
    /// The trainer class, which names the task (see [`TRAINER_TYPES`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// The preset the model config starts from (`gpt2`, `llama2_7b`, `txtcls_bert_base_uncased`, ...).
    pub model_name: String,
}

/// MindFormers' trainer classes and the task each trains.
pub const TRAINER_TYPES: &[(&str, TrainTask)] = &[
    ("CausalLanguageModelingTrainer", TrainTask::TextGeneration),
    ("TextClassificationTrainer", TrainTask::TextClassification),
    ("TokenClassificationTrainer", TrainTask::TokenClassification),
    ("QuestionAnsweringTrainer", TrainTask::QuestionAnswering),
    ("MaskedLanguageModelingTrainer", TrainTask::FillMask),
];

impl TrainerSection {
    /// The task `type` names.
    pub fn task(&self) -> Result<TrainTask> {
        TRAINER_TYPES
            .iter()
            .find(|(k, _)| *k == self.kind)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let known: Vec<&str> = TRAINER_TYPES.iter().map(|(k, _)| *k).collect();
                invalid(format!(
                    "trainer.type = '{}': expected one of {}",
                    self.kind,
                    known.join(", ")
                ))
            })
    }
}

/// `context`: where to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContextSection {
    /// `cpu` or `cuda` (`Ascend` is an error naming these).
    pub device_target: String,
    /// The GPU index for `cuda`.
    pub device_id: usize,
}

impl Default for ContextSection {
    fn default() -> Self {
        ContextSection {
            device_target: "cpu".into(),
            device_id: 0,
        }
    }
}

impl ContextSection {
    /// The device this names.
    pub fn device(&self) -> Result<mf_core::Device> {
        match self.device_target.to_ascii_lowercase().as_str() {
            "cpu" => Ok(mf_core::Device::Cpu),
            "cuda" | "gpu" => Ok(mf_core::Device::Cuda(self.device_id)),
            "ascend" => Err(invalid(
                "context.device_target = \"Ascend\": Ascend NPUs are not supported here; use \"cpu\" or \"cuda\"",
            )),
            other => Err(invalid(format!(
                "context.device_target = \"{other}\": expected \"cpu\" or \"cuda\""
            ))),
        }
    }
}

/// `parallel`: MindSpore's auto-parallel context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParallelSection {
    /// stand_alone, data_parallel, semi_auto_parallel or auto_parallel.
    pub parallel_mode: String,
    /// Average (not sum) gradients over data-parallel ranks.
    pub gradients_mean: bool,
    /// Shard optimizer state over data-parallel ranks.
    pub enable_parallel_optimizer: bool,
    /// Every rank reads the whole batch.
    pub full_batch: bool,
}

impl ParallelSection {
    /// The parsed `parallel_mode`.
    pub fn mode(&self) -> Result<mf_core::ParallelMode> {
        self.parallel_mode
            .parse()
            .map_err(|e: mf_core::MfError| invalid(format!("parallel.parallel_mode: {e}")))
    }
}

impl Default for ParallelSection {
    fn default() -> Self {
        ParallelSection {
            parallel_mode: "stand_alone".into(),
            gradients_mean: false,
            enable_parallel_optimizer: false,
            full_batch: true,
        }
    }
}

/// `runner_config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerConfig {
    /// Epochs to train.
    pub epochs: f64,
    /// Samples per step.
    pub batch_size: usize,
    /// Run host-side callbacks every `sink_size` steps.
    pub sink_mode: bool,
    /// Steps per sink.
    pub sink_size: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            epochs: 1.0,
            batch_size: 1,
            sink_mode: true,
            sink_size: 2,
            gradient_accumulation_steps: 1,
        }
    }
}

/// `model: {model_config: {type: GPT2Config, ...}, arch: {type: GPT2LMHeadModel}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Config keys over the preset's; `type` names the config class.
    pub model_config: Table,
    /// `type` names the model class.
    pub arch: Table,
}

/// `processor: {type: GPT2Processor, tokenizer: {type: GPT2Tokenizer}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorSection {
    /// The processor class (informational; the tokenizer below is what is used).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `ms` as in MindFormers.
    pub return_tensors: Option<String>,
    /// The tokenizer: `type`, and optionally `path` (a preset name or a directory).
    pub tokenizer: Table,
}

/// `train_dataset` / `eval_dataset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// Where the data is.
    pub data_loader: DataLoader,
    /// Columns fed to the model: `["input_ids"]` for text_generation (the default); the other
    /// tasks feed the columns their data collator builds and take none.
    #[serde(default)]
    pub input_columns: Option<Vec<String>>,
    /// Drop the last incomplete batch.
    #[serde(default = "yes")]
    pub drop_remainder: bool,
    /// Use only the first this many samples (MindSpore datasets' `num_samples`).
    #[serde(default)]
    pub num_samples: Option<usize>,
}

fn yes() -> bool {
    true
}

/// `data_loader`: for text_generation `TokenShards` (a directory made by `mf data prepare`)
/// or `TextFiles` (.txt / .jsonl files tokenized and packed into `seq_length + 1` windows at
/// start-up); for the other tasks `TableFiles` (JSONL, JSON, CSV or Parquet rows with named
/// columns, tokenized at start-up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataLoader {
    /// `TokenShards`, `TextFiles` or `TableFiles`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `TokenShards`: the directory.
    #[serde(default)]
    pub dataset_dir: String,
    /// For `TextFiles` and `TableFiles`: the files.
    #[serde(default)]
    pub files: Vec<String>,
    /// Tokens per sample (`TextFiles`: minus one; default: the model's context length,
    /// capped at 512 for `TableFiles`).
    #[serde(default)]
    pub seq_length: Option<usize>,
    /// Shuffle each epoch.
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// `TableFiles`, text_classification and fill_mask: the text column (default `text`).
    #[serde(default)]
    pub text_column: Option<String>,
    /// `TableFiles`, text_classification: the second text of sentence pairs.
    #[serde(default)]
    pub text_pair_column: Option<String>,
    /// `TableFiles`, text_classification: the label column (default `label`).
    #[serde(default)]
    pub label_column: Option<String>,
    /// `TableFiles`, token_classification: the words column (default `tokens`).
    #[serde(default)]
    pub tokens_column: Option<String>,
    /// `TableFiles`, token_classification: the per-word tags column (default `ner_tags`).
    #[serde(default)]
    pub tags_column: Option<String>,
    /// `TableFiles`, question_answering: overlap of the windows a long context is split into
    /// (default 128, as transformers' run_qa).
    #[serde(default)]
    pub doc_stride: Option<usize>,
}

impl DataLoader {
    /// Checks that the keys set belong to `task` and this loader type.
    pub fn check_for(&self, task: TrainTask, which: &str) -> Result<()> {
        let table = self.kind == "TableFiles";
        let expected: &[&str] = if task == TrainTask::TextGeneration {
            &["TokenShards", "TextFiles"]
        } else {
            &["TableFiles"]
        };
        if !expected.contains(&self.kind.as_str()) {
            return Err(invalid(format!(
                "{which}.data_loader.type = '{}': {} reads {}",
                self.kind,
                task.name(),
                expected.join(" or ")
            )));
        }
        let keys: [(&str, bool, &[TrainTask]); 6] = [
            (
                "text_column",
                self.text_column.is_some(),
                &[TrainTask::TextClassification, TrainTask::FillMask],
            ),
            (
                "text_pair_column",
                self.text_pair_column.is_some(),
                &[TrainTask::TextClassification],
            ),
            (
                "label_column",
                self.label_column.is_some(),
                &[TrainTask::TextClassification],
            ),
            (
                "tokens_column",
                self.tokens_column.is_some(),
                &[TrainTask::TokenClassification],
            ),
            (
                "tags_column",
                self.tags_column.is_some(),
                &[TrainTask::TokenClassification],
            ),
            (
                "doc_stride",
                self.doc_stride.is_some(),
                &[TrainTask::QuestionAnswering],
            ),
        ];
        for (key, set, tasks) in keys {
            if set && !(table && tasks.contains(&task)) {
                let names: Vec<&str> = tasks.iter().map(|t| t.name()).collect();
                return Err(invalid(format!(
                    "{which}.data_loader.{key} applies to TableFiles data of {}, not to {} with {}",
                    names.join(" and "),
                    task.name(),
                    self.kind
                )));
            }
        }
        Ok(())
    }
}

/// `optimizer: {type: AdamW, beta1, beta2, eps, weight_decay}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerSection {
    /// AdamW (also MindFormers' FusedAdamWeightDecay / AdamWeightDecay), Adam or SGD.
    #[serde(rename = "type")]
    pub kind: String,
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        OptimizerSection {
            kind: "AdamW".into(),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// `lr_schedule: {type: CosineWithWarmUpLR, learning_rate, lr_end, warmup_steps, ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LrScheduleSection {
    /// CosineWithWarmUpLR, LinearWithWarmUpLR, PolynomialWithWarmUpLR, ConstantWarmUpLR,
    /// CosineWithRestartsAndWarmUpLR or constant.
    #[serde(rename = "type")]
    pub kind: String,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Final learning rate.
    pub lr_end: f64,
    /// Warmup steps.
    pub warmup_steps: Option<usize>,
    /// Warmup as a fraction of all steps.
    pub warmup_ratio: Option<f64>,
    /// Learning rate at the start of warmup.
    pub warmup_lr_init: f64,
    /// Steps in the run; -1 derives them from epochs and the data.
    pub total_steps: i64,
}

impl Default for LrScheduleSection {
    fn default() -> Self {
        LrScheduleSection {
            kind: "CosineWithWarmUpLR".into(),
            learning_rate: 5e-5,
            lr_end: 1e-6,
            warmup_steps: None,
            warmup_ratio: None,
            warmup_lr_init: 0.0,
            total_steps: -1,
        }
    }
}

/// One callback: `MFLossMonitor {per_print_times}` or `CheckpointMonitor
/// {save_checkpoint_steps, keep_checkpoint_max}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum CallbackSection {
    /// Log every `per_print_times` steps.
    MFLossMonitor {
        /// Steps between log lines.
        #[serde(default = "one")]
        per_print_times: usize,
    },
    /// Save every `save_checkpoint_steps` steps, keep the newest `keep_checkpoint_max`.
    CheckpointMonitor {
        /// Steps between checkpoints.
        save_checkpoint_steps: usize,
        /// Checkpoints kept.
        #[serde(default)]
        keep_checkpoint_max: Option<usize>,
    },
}

fn one() -> usize {
    1
}

/// `metric: {type: PerplexityMetric}`: evaluation reports loss and perplexity; `Accuracy`
/// adds next-token accuracy for text_generation. The other tasks name their own metric:
/// `Accuracy` (text_classification), `EntityScore` (token_classification: entity precision,
/// recall and F1), `SQuADMetric` (question_answering: exact match and F1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSection {
    /// PerplexityMetric, Accuracy, EntityScore or SQuADMetric.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Merges `over` into `base`: tables key by key, everything else replaced.
fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Reads a config file with its `base_config` chain (paths relative to the file citing them).
pub fn load_table(path: &Path) -> Result<Table> {
    load_table_depth(path, 0)
}

fn load_table_depth(path: &Path, depth: usize) -> Result<Table> {
    if depth > 8 {
        return Err(MfError::config(
            path.display(),
            "base_config chain deeper than 8 (a cycle?)",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| MfError::io(path, e))?;
    let mut table: Table =
        toml::from_str(&text).map_err(|e| MfError::config(path.display(), e.to_string()))?;
    let bases = match table.remove("base_config") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(MfError::config(
                    path.display(),
                    format!("base_config entries must be paths, got {other}"),
                )),
            })
            .collect::<Result<_>>()?,
        Some(other) => {
            return Err(MfError::config(
                path.display(),
                format!("base_config must be a path or a list of paths, got {other}"),
            ))
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut merged = Table::new();
    for b in bases {
        merge(&mut merged, load_table_depth(&dir.join(b), depth + 1)?);
    }
    merge(&mut merged, table);
    Ok(merged)
}

/// Applies `section.key=value` (value in TOML syntax; bare words are strings).
pub fn apply_set(table: &mut Table, set: &str) -> Result<()> {
    let (key, raw) = set
        .split_once('=')
        .ok_or_else(|| invalid(format!("--set '{set}' is not KEY=VALUE")))?;
    let value = toml::from_str::<Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.trim().to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, path) = parts
        .split_last()
        .ok_or_else(|| invalid(format!("--set '{set}' has an empty key")))?;
    let mut t = table;
    for p in path {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| invalid(format!("--set '{set}': '{p}' is a value, not a section")))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

impl RunConfig {
    /// Loads a config file (with `base_config`) and applies `--set` overrides.
    pub fn load(path: &Path, sets: &[String]) -> Result<Self> {
        let mut table = load_table(path)?;
        for s in sets {
            apply_set(&mut table, s)?;
        }
        let cfg: RunConfig = Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| MfError::config(path.display(), e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<()> {
        if !["train", "finetune", "eval", "predict"].contains(&self.run_mode.as_str()) {
            return Err(invalid(format!(
                "run_mode = '{}': expected train, finetune, eval or predict",
                self.run_mode
            )));
        }
        let task = self.trainer.task()?;
        for (which, d) in [
            ("train_dataset", &self.train_dataset),
            ("eval_dataset", &self.eval_dataset),
        ] {
            let Some(d) = d else { continue };
            d.data_loader.check_for(task, which)?;
            match (&d.input_columns, task) {
                (None, _) => {}
                (Some(c), TrainTask::TextGeneration) if c == &["input_ids"] => {}
                (Some(c), TrainTask::TextGeneration) => {
                    return Err(invalid(format!(
                        "{which}.input_columns = {c:?}: the text_generation task reads [\"input_ids\"]"
                    )))
                }
                (Some(_), t) => {
                    return Err(invalid(format!(
                        "{which}.input_columns: {} builds its model inputs (input_ids, attention_mask, token_type_ids, labels) from the table; remove input_columns and name the table's columns in data_loader (text_column, label_column, ...)",
                        t.name()
                    )))
                }
            }
        }
        self.context.device()?;
        self.parallel.mode()?;
        if let Some(r) = &self.processor.return_tensors {
            if r != "ms" {
                return Err(invalid(format!(
                    "processor.return_tensors = '{r}': the only value is \"ms\" (MindFormers' tensors)"
                )));
            }
        }
        self.parallel_config.validate()?;
        self.recompute_config.validate()?;
        if let Some(m) = &self.metric {
            // MindFormers' metric classes; the trainer computes each task's own.
            let allowed: &[&str] = match task {
                TrainTask::TextGeneration => &["PerplexityMetric", "Accuracy"],
                TrainTask::TextClassification => &["Accuracy"],
                TrainTask::TokenClassification => &["EntityScore"],
                TrainTask::QuestionAnswering => &["SQuADMetric"],
                TrainTask::FillMask => &["PerplexityMetric"],
            };
            if !allowed.contains(&m.kind.as_str()) {
                return Err(invalid(format!(
                    "metric.type = '{}': {} evaluates with {}",
                    m.kind,
                    task.name(),
                    allowed.join(" or ")
                )));
            }
        }
        self.training_arguments().map(|_| ())
    }

    /// The equivalent `TrainingArguments`.
    pub fn training_arguments(&self) -> Result<TrainingArguments> {
        let optim = match self.optimizer.kind.as_str() {
            "AdamW" | "FusedAdamWeightDecay" | "AdamWeightDecay" => "adamw",
            "Adam" => "adam",
            "SGD" => "sgd",
            other => {
                return Err(invalid(format!(
                    "optimizer.type = '{other}': expected AdamW (FusedAdamWeightDecay, AdamWeightDecay), Adam or SGD"
                )))
            }
        };
        let lr = &self.lr_schedule;
        let sched = match lr.kind.as_str() {
            "CosineWithWarmUpLR" => "cosine",
            "LinearWithWarmUpLR" => "linear",
            "PolynomialWithWarmUpLR" => "polynomial",
            "ConstantWarmUpLR" => "constant_with_warmup",
            "CosineWithRestartsAndWarmUpLR" => "cosine_with_restarts",
            "constant" => "constant",
            other => {
                return Err(invalid(format!(
                    "lr_schedule.type = '{other}': expected CosineWithWarmUpLR, LinearWithWarmUpLR, PolynomialWithWarmUpLR, ConstantWarmUpLR, CosineWithRestartsAndWarmUpLR or constant"
                )))
            }
        };
        let mut a = TrainingArguments {
            output_dir: self.output_dir.clone(),
            seed: self.seed,
            num_train_epochs: self.runner_config.epochs,
            max_steps: (lr.total_steps > 0).then_some(lr.total_steps as usize),
            batch_size: Some(self.runner_config.batch_size),
            per_device_eval_batch_size: self.runner_config.batch_size,
            gradient_accumulation_steps: self.runner_config.gradient_accumulation_steps,
            learning_rate: lr.learning_rate,
            lr_scheduler_type: sched.into(),
            lr_end: lr.lr_end,
            warmup_steps: lr.warmup_steps,
            warmup_ratio: lr.warmup_ratio,
            warmup_lr_init: lr.warmup_lr_init,
            optim: optim.into(),
            adam_beta1: self.optimizer.beta1,
            adam_beta2: self.optimizer.beta2,
            adam_epsilon: self.optimizer.eps,
            weight_decay: self.optimizer.weight_decay,
            sink_mode: self.runner_config.sink_mode,
            sink_size: self.runner_config.sink_size,
            save_strategy: "no".into(),
            shuffle: self
                .train_dataset
                .as_ref()
                .is_none_or(|d| d.data_loader.shuffle),
            dataloader_drop_last: self.train_dataset.as_ref().is_none_or(|d| d.drop_remainder),
            ..Default::default()
        };
        for cb in &self.callbacks {
            match cb {
                CallbackSection::MFLossMonitor { per_print_times } => {
                    a.logging_steps = *per_print_times
                }
                CallbackSection::CheckpointMonitor {
                    save_checkpoint_steps,
                    keep_checkpoint_max,
                } => {
                    a.save_strategy = "steps".into();
                    a.save_steps = *save_checkpoint_steps;
                    a.save_total_limit = *keep_checkpoint_max;
                }
            }
        }
        if self.do_eval {
            if self.eval_step_interval > 0 {
                a.evaluation_strategy = "steps".into();
                a.eval_steps = Some(self.eval_step_interval as usize);
            } else {
                a.evaluation_strategy = "epoch".into();
            }
        }
        if self.resume_training {
            a.resume_from_checkpoint = Some(
                if !self.load_checkpoint.is_empty()
                    && Path::new(&self.load_checkpoint)
                        .join("trainer_state.json")
                        .is_file()
                {
                    ResumeFrom::Path(self.load_checkpoint.clone())
                } else {
                    ResumeFrom::Latest(true)
                },
            );
        }
        a.validate()?;
        Ok(a)
    }

    /// Files a `TextFiles` or `TableFiles` loader names, checked to exist.
    pub fn text_files(loader: &DataLoader) -> Result<Vec<PathBuf>> {
        if loader.files.is_empty() {
            return Err(invalid(format!(
                "data_loader type {} needs files = [...] (e.g. --set train_dataset.data_loader.files='[\"train.jsonl\"]')",
                loader.kind
            )));
        }
        loader
            .files
            .iter()
            .map(|f| {
                let p = PathBuf::from(f);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(MfError::NotFound(format!(
                        "dataset file {f} does not exist"
                    )))
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
seed = 1
output_dir = "./out"
[trainer]
type = "CausalLanguageModelingTrainer"
model_name = "gpt2"
[runner_config]
epochs = 2
batch_size = 4
[model.model_config]
type = "GPT2Config"
num_layers = 12
[optimizer]
type = "FusedAdamWeightDecay"
beta2 = 0.95
weight_decay = 0.1
[lr_schedule]
type = "CosineWithWarmUpLR"
learning_rate = 1e-4
warmup_ratio = 0.01
[[callbacks]]
type = "MFLossMonitor"
per_print_times = 10
[[callbacks]]
type = "CheckpointMonitor"
save_checkpoint_steps = 500
keep_checkpoint_max = 2
"#;

    #[test]
    fn base_config_sets_and_translation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("gpt2")).unwrap();
        std::fs::write(dir.path().join("gpt2/base.toml"), BASE).unwrap();
        std::fs::write(
            dir.path().join("child.toml"),
            "base_config = \"gpt2/base.toml\"\nseed = 7\n[model.model_config]\nnum_layers = 2\n",
        )
        .unwrap();
        let c = RunConfig::load(
            &dir.path().join("child.toml"),
            &["runner_config.batch_size=8".into(), "run_mode=eval".into()],
        )
        .unwrap();
        assert_eq!((c.seed, c.run_mode.as_str()), (7, "eval"));
        assert_eq!(c.model.model_config["num_layers"].as_integer(), Some(2));
        assert_eq!(c.model.model_config["type"].as_str(), Some("GPT2Config"));
        let a = c.training_arguments().unwrap();
        assert_eq!(a.batch_size, Some(8));
        assert_eq!(a.num_train_epochs, 2.0);
        assert_eq!(
            (a.optim.as_str(), a.adam_beta2, a.weight_decay),
            ("adamw", 0.95, 0.1)
        );
        assert_eq!(
            (a.lr_scheduler_type.as_str(), a.warmup_ratio),
            ("cosine", Some(0.01))
        );
        assert_eq!(
            (a.logging_steps, a.save_steps, a.save_total_limit),
            (10, 500, Some(2))
        );
    }

    #[test]
    fn every_shipped_run_config_loads() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = Vec::new();
        for family in std::fs::read_dir(&configs).unwrap() {
            for f in std::fs::read_dir(family.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                if !name.starts_with("run_") {
                    continue;
                }
                let c = RunConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
                seen.push((name, c.trainer.task().unwrap()));
            }
        }
        for task in [
            TrainTask::TextGeneration,
            TrainTask::TextClassification,
            TrainTask::TokenClassification,
            TrainTask::QuestionAnswering,
            TrainTask::FillMask,
        ] {
            assert!(
                seen.iter().filter(|(_, t)| *t == task).count() >= 2,
                "{task:?}: {seen:?}"
            );
        }
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, BASE).unwrap();
        let err = |sets: &[&str]| {
            RunConfig::load(&p, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["runner_config.epoch=3"]).contains("epoch"));
        assert!(err(&["context.device_target=Ascend"]).contains("cpu"));
        assert!(err(&["optimizer.type=Lamb"]).contains("AdamW"));
        assert!(err(&["lr_schedule.type=Step"]).contains("CosineWithWarmUpLR"));
        assert!(err(&["run_mode=serve"]).contains("predict"));
        assert!(err(&["parallel.parallel_mode=semi_parallel"]).contains("SEMI_AUTO_PARALLEL"));
        assert!(err(&["seed.x=1"]).contains("not a section"));
        assert!(err(&["processor.return_tensors=pt"]).contains("return_tensors"));
        assert!(err(&["runner_config.batch_size=0"]).contains("batch_size"));
        std::fs::write(&p, "base_config = \"c.toml\"\n").unwrap();
        assert!(err(&[]).contains("deeper"));
    }
}
