//! `pipeline(task)`: choose the task, model (name, directory or instance), tokenizer and
//! default options, then `build()` (text generation, typed) or `build_task()` (any task,
//! behind the [`Pipeline`] trait). Tasks are looked up in one registry, [`TASK_REGISTRY`].
use std::path::Path;

use mf_core::{DType, Device, MfError, Result};
use mf_models::{AutoModel, CausalLM, GenerationOverrides, Task, TaskModel};
use mf_tokenizers::{AutoTokenizer, Tokenizer};

use crate::task::{Pipeline, Pooling};
use crate::tasks::{
    FeatureExtractionPipeline, FillMaskPipeline, QuestionAnsweringPipeline,
    TextClassificationPipeline, TokenClassificationPipeline,
};
use crate::text_generation::TextGenerationPipeline;

/// One registered task: its MindFormers name, HF aliases and the head it needs.
pub struct TaskSpec {
    /// MindFormers' name (`fill_mask`).
    pub name: &'static str,
    /// Other accepted names (HF's `fill-mask`, `ner`, `sentiment-analysis`, ...).
    pub aliases: &'static [&'static str],
    /// The model head the task runs on.
    pub head: Task,
}

/// Every task `pipeline` serves.
pub const TASK_REGISTRY: &[TaskSpec] = &[
    TaskSpec {
        name: "text_generation",
        aliases: &["text-generation"],
        head: Task::CausalLM,
    },
    TaskSpec {
        name: "fill_mask",
        aliases: &["fill-mask"],
        head: Task::MaskedLM,
    },
    TaskSpec {
        name: "text_classification",
        aliases: &[
            "text-classification",
            "sentiment-analysis",
            "sentiment_analysis",
        ],
        head: Task::SequenceClassification,
    },
    TaskSpec {
        name: "token_classification",
        aliases: &["token-classification", "ner"],
        head: Task::TokenClassification,
    },
    TaskSpec {
        name: "question_answering",
        aliases: &["question-answering"],
        head: Task::QuestionAnswering,
    },
    TaskSpec {
        name: "feature_extraction",
        aliases: &["feature-extraction"],
        head: Task::Base,
    },
];

/// Supported task names (MindFormers' spelling).
pub const TASKS: &[&str] = &[
    "text_generation",
    "fill_mask",
    "text_classification",
    "token_classification",
    "question_answering",
    "feature_extraction",
];

/// The registered task called `name` (either spelling).
pub fn resolve_task(name: &str) -> Result<&'static TaskSpec> {
    TASK_REGISTRY
        .iter()
        .find(|t| t.name == name || t.aliases.contains(&name))
        .ok_or_else(|| {
            let all: Vec<&str> = TASK_REGISTRY
                .iter()
                .flat_map(|t| std::iter::once(t.name).chain(t.aliases.iter().copied()))
                .collect();
            MfError::unknown("task", name, &all)
        })
}

/// Where the pipeline's model comes from.
pub enum ModelArg {
    /// A preset name (`gpt2`) or a Hugging Face directory.
    Name(String),
    /// An already constructed causal LM.
    Model(Box<dyn CausalLM>),
    /// An already constructed model with another head.
    Task(Box<dyn TaskModel>),
}

impl From<&str> for ModelArg {
    fn from(s: &str) -> Self {
        ModelArg::Name(s.to_string())
    }
}

impl From<String> for ModelArg {
    fn from(s: String) -> Self {
        ModelArg::Name(s)
    }
}

impl From<&Path> for ModelArg {
    fn from(p: &Path) -> Self {
        ModelArg::Name(p.display().to_string())
    }
}

impl From<Box<dyn CausalLM>> for ModelArg {
    fn from(m: Box<dyn CausalLM>) -> Self {
        ModelArg::Model(m)
    }
}

impl From<Box<dyn TaskModel>> for ModelArg {
    fn from(m: Box<dyn TaskModel>) -> Self {
        ModelArg::Task(m)
    }
}

impl From<mf_models::Bert> for ModelArg {
    fn from(m: mf_models::Bert) -> Self {
        ModelArg::Task(Box::new(m))
    }
}

impl From<mf_models::GPT2LMHeadModel> for ModelArg {
    fn from(m: mf_models::GPT2LMHeadModel) -> Self {
        ModelArg::Model(Box::new(m))
    }
}

/// Collects the pipeline's parts; see [`pipeline`].
pub struct PipelineBuilder {
    task: String,
    model: Option<ModelArg>,
    tokenizer: Option<Tokenizer>,
    defaults: GenerationOverrides,
    device: Device,
    dtype: DType,
}

/// Starts a pipeline for `task` (`text_generation`).
pub fn pipeline(task: &str) -> PipelineBuilder {
    PipelineBuilder {
        task: task.to_string(),
        model: None,
        tokenizer: None,
        defaults: GenerationOverrides::default(),
        device: Device::Cpu,
        dtype: DType::F32,
    }
}

impl PipelineBuilder {
    /// The model: a preset name, a directory, or a model instance.
    pub fn model(mut self, model: impl Into<ModelArg>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The tokenizer (needed when the model is an instance).
    pub fn tokenizer(mut self, tokenizer: Tokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Default `max_length` for every call.
    pub fn max_length(mut self, n: usize) -> Self {
        self.defaults.max_length = Some(n);
        self
    }

    /// Default generation options for every call.
    pub fn generation(mut self, o: GenerationOverrides) -> Self {
        self.defaults = o;
        self
    }

    /// Runs on this device.
    pub fn device(mut self, d: Device) -> Self {
        self.device = d;
        self
    }

    /// Runs in this dtype.
    pub fn dtype(mut self, d: DType) -> Self {
        self.dtype = d;
        self
    }

    /// Loads what is needed and returns the text-generation pipeline (typed; other tasks
    /// come from [`PipelineBuilder::build_task`]).
    pub fn build(self) -> Result<TextGenerationPipeline> {
        let spec = resolve_task(&self.task)?;
        if spec.head != Task::CausalLM {
            return Err(mf_core::invalid(format!(
                "build() makes text_generation pipelines; use build_task() for {}",
                spec.name
            )));
        }
        let model_arg = self.model.ok_or_else(|| {
            mf_core::invalid("pipeline needs a model: .model(\"gpt2\") or a model instance")
        })?;
        let (model, tokenizer) = match model_arg {
            ModelArg::Name(name) => {
                let tokenizer = match self.tokenizer {
                    Some(t) => t,
                    None => AutoTokenizer::from_pretrained(&name)?,
                };
                // Read straight at the pipeline's dtype and device: no f32 copy first.
                let m = AutoModel::from_pretrained_on(&name, self.device, self.dtype)?;
                (m, tokenizer)
            }
            ModelArg::Model(mut m) => {
                let tokenizer = self.tokenizer.ok_or_else(|| {
                    mf_core::invalid("a pipeline over a model instance needs .tokenizer(...)")
                })?;
                if self.device != Device::Cpu || self.dtype != DType::F32 {
                    m.to(self.device, self.dtype)?;
                }
                (m, tokenizer)
            }
            ModelArg::Task(m) => {
                return Err(mf_core::invalid(format!(
                    "text_generation needs a causal LM, but this {} model has a {} head",
                    m.model_type(),
                    m.task()
                )))
            }
        };
        if tokenizer.vocab_size() > model.vocab_size() {
            return Err(mf_core::invalid(format!(
                "the tokenizer has {} tokens but the model only {} embeddings; they do not belong together",
                tokenizer.vocab_size(),
                model.vocab_size()
            )));
        }
        TextGenerationPipeline::new(model, tokenizer, self.defaults)
    }

    /// Loads what is needed and returns the pipeline of any registered task.
    pub fn build_task(self) -> Result<Box<dyn Pipeline>> {
        let spec = resolve_task(&self.task)?;
        if spec.head == Task::CausalLM {
            let p = PipelineBuilder {
                task: spec.name.to_string(),
                ..self
            };
            return Ok(Box::new(p.build()?));
        }
        let model_arg = self.model.ok_or_else(|| {
            mf_core::invalid(format!(
                "pipeline needs a model: .model(\"bert_base_uncased\"), a directory or a model instance for {}",
                spec.name
            ))
        })?;
        let mut st = None;
        let (model, tokenizer) = match model_arg {
            ModelArg::Name(name) => {
                // The model's files first: where they are decides where the tokenizer is.
                let dir = mf_models::auto::resolve_model_dir(&name)?;
                let tokenizer = match self.tokenizer {
                    Some(t) => t,
                    None => AutoTokenizer::from_pretrained(&name)
                        .or_else(|_| Tokenizer::from_dir(&dir))?,
                };
                st = crate::tasks::feature_extraction::sentence_transformers_config(&dir)?;
                let m = mf_models::auto::load_task_model(
                    &dir.display().to_string(),
                    spec.head,
                    self.device,
                    self.dtype,
                )?;
                (m, tokenizer)
            }
            ModelArg::Task(mut m) => {
                let tokenizer = self.tokenizer.ok_or_else(|| {
                    mf_core::invalid("a pipeline over a model instance needs .tokenizer(...)")
                })?;
                if self.device != Device::Cpu || self.dtype != DType::F32 {
                    m.to(self.device, self.dtype)?;
                }
                (m, tokenizer)
            }
            ModelArg::Model(_) => {
                return Err(mf_core::invalid(format!(
                    "{} needs a model with a {} head, not a causal LM",
                    spec.name, spec.head
                )))
            }
        };
        if tokenizer.vocab_size() > model.vocab_size() {
            return Err(mf_core::invalid(format!(
                "the tokenizer has {} tokens but the model only {} embeddings; they do not belong together",
                tokenizer.vocab_size(),
                model.vocab_size()
            )));
        }
        Ok(match spec.head {
            Task::MaskedLM => Box::new(FillMaskPipeline::new(model, tokenizer)?),
            Task::SequenceClassification => {
                Box::new(TextClassificationPipeline::new(model, tokenizer)?)
            }
            Task::TokenClassification => {
                Box::new(TokenClassificationPipeline::new(model, tokenizer)?)
            }
            Task::QuestionAnswering => Box::new(QuestionAnsweringPipeline::new(model, tokenizer)?),
            Task::Base => {
                let (pooling, normalize) = st.unwrap_or((Pooling::None, false));
                Box::new(FeatureExtractionPipeline::new(
                    model, tokenizer, pooling, normalize,
                )?)
            }
            Task::CausalLM => unreachable!("handled above"),
        })
    }
}
