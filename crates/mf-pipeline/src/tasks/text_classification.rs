//! `text_classification`: labels of a text or sentence pair, with transformers'
//! `TextClassificationPipeline` semantics: softmax for single-label heads, sigmoid for
//! multi-label ones (and one-label heads), identity for regression; without `top_k` the best
//! label alone, with it the `top_k` best sorted by score.
use mf_core::{invalid, Result};
use mf_models::{Task, TaskModel};
use mf_tokenizers::Tokenizer;
use serde::Serialize;
use serde_json::Value;

use crate::task::{
    encode_one, forward_rows, require_head, softmax, to_vec_f32, CallOptions, Pipeline,
    PipelineInput,
};

/// A label with its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    /// Label name (`id2label`).
    pub label: String,
    /// Probability (or raw value for regression).
    pub score: f64,
}

/// A sequence classifier with its tokenizer.
pub struct TextClassificationPipeline {
    model: Box<dyn TaskModel>,
    tokenizer: Tokenizer,
}

impl TextClassificationPipeline {
    /// Assembles the pipeline; the model needs a sequence-classification head.
    pub fn new(model: Box<dyn TaskModel>, tokenizer: Tokenizer) -> Result<Self> {
        require_head(
            model.as_ref(),
            Task::SequenceClassification,
            "text_classification",
        )?;
        Ok(TextClassificationPipeline { model, tokenizer })
    }

    /// Every label's score, in label-id order.
    pub fn scores(&self, text: &str, text_pair: Option<&str>) -> Result<Vec<LabelScore>> {
        let row = encode_one(&self.tokenizer, text, text_pair, None)?;
        let out = forward_rows(self.model.as_ref(), &[&row])?;
        let logits = to_vec_f32(&out.logits()?.get(0))?;
        let labels = self.model.id2label();
        let regression = self.model.config_json()["problem_type"] == "regression";
        let probs: Vec<f32> = if regression {
            logits
        } else if self.model.multi_label() || labels.len() == 1 {
            logits.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect()
        } else {
            softmax(&logits)
        };
        Ok(probs
            .into_iter()
            .enumerate()
            .map(|(i, s)| LabelScore {
                label: labels
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("LABEL_{i}")),
                score: s as f64,
            })
            .collect())
    }

    /// The `top_k` best labels, best first (all of them when `top_k` exceeds the count).
    pub fn call(
        &self,
        text: &str,
        text_pair: Option<&str>,
        top_k: usize,
    ) -> Result<Vec<LabelScore>> {
        if top_k == 0 {
            return Err(invalid("top_k must be at least 1"));
        }
        let mut s = self.scores(text, text_pair)?;
        // A stable sort keeps label order on ties, as Python's sort does.
        s.sort_by(|a, b| b.score.total_cmp(&a.score));
        s.truncate(top_k);
        Ok(s)
    }
}

impl Pipeline for TextClassificationPipeline {
    fn task(&self) -> &'static str {
        "text_classification"
    }

    fn run(&self, inputs: &[PipelineInput], opts: &CallOptions) -> Result<Vec<Value>> {
        opts.reject("text_classification", &["top_k"])?;
        let k = opts.top_k_checked()?;
        inputs
            .iter()
            .map(|i| {
                let (text, pair) = match i {
                    PipelineInput::Text(t) => (t.as_str(), None),
                    PipelineInput::Pair { text, text_pair } => {
                        (text.as_str(), Some(text_pair.as_str()))
                    }
                    PipelineInput::Qa { .. } => {
                        return Err(invalid("text_classification takes texts or text pairs"))
                    }
                };
                // Without top_k both libraries return the best label in a one-element list.
                let r = self.call(text, pair, k.unwrap_or(1))?;
                Ok(serde_json::to_value(r)?)
            })
            .collect()
    }
}
