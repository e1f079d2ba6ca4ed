//! `pipeline(task)`: choose the task, model (name, directory or instance), tokenizer and
//! default generation options, then `build()`.
use std::path::Path;

use mf_core::{DType, Device, MfError, Result};
use mf_models::{AutoModel, CausalLM, GenerationOverrides};
use mf_tokenizers::{AutoTokenizer, Tokenizer};

use crate::text_generation::TextGenerationPipeline;

/// Supported task names (MindFormers' spelling).
pub const TASKS: &[&str] = &["text_generation"];

/// Where the pipeline's model comes from.
pub enum ModelArg {
    /// A preset name (`gpt2`) or a Hugging Face directory.
    Name(String),
    /// An already constructed model.
    Model(Box<dyn CausalLM>),
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

    /// Loads what is needed and returns the pipeline.
    pub fn build(self) -> Result<TextGenerationPipeline> {
        if !TASKS.contains(&self.task.as_str()) {
            return Err(MfError::unknown("task", &self.task, TASKS));
        }
        let model_arg = self.model.ok_or_else(|| {
            mf_core::invalid("pipeline needs a model: .model(\"gpt2\") or a model instance")
        })?;
        let (mut model, tokenizer) = match model_arg {
            ModelArg::Name(name) => {
                let tokenizer = match self.tokenizer {
                    Some(t) => t,
                    None => AutoTokenizer::from_pretrained(&name)?,
                };
                (AutoModel::from_pretrained(&name)?, tokenizer)
            }
            ModelArg::Model(m) => {
                let tokenizer = self.tokenizer.ok_or_else(|| {
                    mf_core::invalid("a pipeline over a model instance needs .tokenizer(...)")
                })?;
                (m, tokenizer)
            }
        };
        if tokenizer.vocab_size() > model.vocab_size() {
            return Err(mf_core::invalid(format!(
                "the tokenizer has {} tokens but the model only {} embeddings; they do not belong together",
                tokenizer.vocab_size(),
                model.vocab_size()
            )));
        }
        if self.device != Device::Cpu || self.dtype != DType::F32 {
            model.to(self.device, self.dtype)?;
        }
        TextGenerationPipeline::new(model, tokenizer, self.defaults)
    }
}
