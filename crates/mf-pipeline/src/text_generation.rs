//! The `text_generation` task: prompts in, `[{'text_generation_text': [...]}]` out.
use std::fmt;

use mf_core::Result;
use mf_models::generation::Streamer;
use mf_models::{generate, CausalLM, GenerationConfig, GenerationOverrides};
use mf_tokenizers::Tokenizer;
use serde::Serialize;

use crate::repr::py_str;

/// One prompt's result, serialized as `{"text_generation_text": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TextGenerationOutput {
    /// The prompt followed by the generated text.
    pub text_generation_text: Vec<String>,
    /// Prompt ids followed by generated ids.
    #[serde(skip)]
    pub output_ids: Vec<u32>,
}

/// Printing a result list gives MindFormers' exact text.
pub struct Outputs<'a>(pub &'a [TextGenerationOutput]);

impl fmt::Display for Outputs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, o) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            let texts: Vec<String> = o.text_generation_text.iter().map(|t| py_str(t)).collect();
            write!(f, "{{'text_generation_text': [{}]}}", texts.join(", "))?;
        }
        write!(f, "]")
    }
}

/// A causal LM with its tokenizer and default generation settings.
pub struct TextGenerationPipeline {
    model: Box<dyn CausalLM>,
    tokenizer: Tokenizer,
    config: GenerationConfig,
}

impl TextGenerationPipeline {
    /// Assembles a pipeline; `defaults` override the model's generation config.
    pub fn new(
        model: Box<dyn CausalLM>,
        tokenizer: Tokenizer,
        defaults: GenerationOverrides,
    ) -> Result<Self> {
        let mut config = model.generation_config().with(&defaults);
        if let Some(eos) = tokenizer.eos_token_id() {
            if config.eos_token_id.is_empty() {
                config.eos_token_id = vec![eos];
            }
        }
        if config.pad_token_id.is_none() {
            config.pad_token_id = tokenizer.pad_token_id();
        }
        config.validate()?;
        Ok(TextGenerationPipeline {
            model,
            tokenizer,
            config,
        })
    }

    /// The generation settings calls start from.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model.
    pub fn model(&self) -> &dyn CausalLM {
        self.model.as_ref()
    }

    /// Writes the model (`config.json`, `model.safetensors`) and the tokenizer files to `dir`,
    /// a directory Hugging Face `from_pretrained` and this crate both load.
    pub fn save_pretrained(&self, dir: &std::path::Path) -> Result<()> {
        self.model.save_pretrained(dir)?;
        self.tokenizer.save_pretrained(dir)
    }

    /// Generates for one prompt.
    pub fn call(
        &self,
        prompt: &str,
        overrides: &GenerationOverrides,
    ) -> Result<Vec<TextGenerationOutput>> {
        self.call_batch(&[prompt], overrides, None)
    }

    /// Generates for several prompts in one left-padded batch, optionally streaming tokens.
    pub fn call_batch<S: AsRef<str>>(
        &self,
        prompts: &[S],
        overrides: &GenerationOverrides,
        streamer: Option<&mut dyn Streamer>,
    ) -> Result<Vec<TextGenerationOutput>> {
        if prompts.is_empty() {
            return Err(mf_core::invalid("no input text given"));
        }
        let cfg = self.config.with(overrides);
        let mut ids = Vec::with_capacity(prompts.len());
        for p in prompts {
            let row = self.tokenizer.encode_ids(p.as_ref())?;
            if row.is_empty() {
                return Err(mf_core::invalid(
                    "an input text is empty (it gives no tokens)",
                ));
            }
            ids.push(row);
        }
        let out = generate(self.model.as_ref(), &ids, &cfg, streamer)?;
        out.into_iter()
            .map(|row| {
                Ok(TextGenerationOutput {
                    text_generation_text: vec![self.tokenizer.decode(&row, true)?],
                    output_ids: row,
                })
            })
            .collect()
    }
}

impl crate::task::Pipeline for TextGenerationPipeline {
    fn task(&self) -> &'static str {
        "text_generation"
    }

    fn run(
        &self,
        inputs: &[crate::task::PipelineInput],
        opts: &crate::task::CallOptions,
    ) -> Result<Vec<serde_json::Value>> {
        opts.reject("text_generation", &[])?;
        let prompts = inputs
            .iter()
            .map(|i| i.text("text_generation"))
            .collect::<Result<Vec<_>>>()?;
        let out = self.call_batch(&prompts, &opts.generation, None)?;
        out.iter().map(|o| Ok(serde_json::to_value(o)?)).collect()
    }
}
