//! `fill_mask`: the most likely tokens for each mask token, with transformers'
//! `FillMaskPipeline` semantics (`top_k` candidates per mask; the filled-in sequence decoded
//! without special tokens when there is one mask, with them when there are several).
use mf_core::{invalid, Result};
use mf_models::{Task, TaskModel};
use mf_tokenizers::Tokenizer;
use serde::Serialize;
use serde_json::Value;

use crate::task::{
    encode_one, forward_rows, require_head, softmax, to_vec_f32, CallOptions, Pipeline,
    PipelineInput,
};

/// One candidate for one mask.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FillMaskCandidate {
    /// Probability of the token at the mask.
    pub score: f64,
    /// Token id.
    pub token: u32,
    /// The token decoded alone.
    pub token_str: String,
    /// The input with this token in place of the mask.
    pub sequence: String,
}

/// A masked LM with its tokenizer.
pub struct FillMaskPipeline {
    model: Box<dyn TaskModel>,
    tokenizer: Tokenizer,
}

impl FillMaskPipeline {
    /// Default number of candidates per mask.
    pub const DEFAULT_TOP_K: usize = 5;

    /// Assembles the pipeline; the model needs a masked-LM head and the tokenizer a mask token.
    pub fn new(model: Box<dyn TaskModel>, tokenizer: Tokenizer) -> Result<Self> {
        require_head(model.as_ref(), Task::MaskedLM, "fill_mask")?;
        if tokenizer.mask_token_id().is_none() {
            return Err(invalid(
                "fill_mask needs a tokenizer with a mask token (mask_token in tokenizer_config.json)",
            ));
        }
        Ok(FillMaskPipeline { model, tokenizer })
    }

    /// Candidates for each mask of `text`, `top_k` per mask, in mask order.
    pub fn call(&self, text: &str, top_k: usize) -> Result<Vec<Vec<FillMaskCandidate>>> {
        if top_k == 0 {
            return Err(invalid("top_k must be at least 1"));
        }
        let mask_id = self.tokenizer.mask_token_id().unwrap_or_default();
        let mask_str = self.tokenizer.mask_token.clone().unwrap_or_default();
        let row = encode_one(&self.tokenizer, text, None, None)?;
        let masks: Vec<usize> = row
            .input_ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == mask_id)
            .map(|(i, _)| i)
            .collect();
        if masks.is_empty() {
            return Err(invalid(format!(
                "no mask token ({mask_str}) found in the input '{text}'"
            )));
        }
        let out = forward_rows(self.model.as_ref(), &[&row])?;
        let logits = out.logits()?.get(0);
        let single = masks.len() == 1;
        let pad = self.tokenizer.pad_token_id();
        let mut result = Vec::with_capacity(masks.len());
        for &m in &masks {
            let probs = softmax(&to_vec_f32(&logits.get(m as i64))?);
            let mut order: Vec<usize> = (0..probs.len()).collect();
            // Stable on ties, like torch.topk on CPU for distinct values.
            order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b)));
            let mut row_out = Vec::with_capacity(top_k);
            for &p in order.iter().take(top_k) {
                let mut ids = row.input_ids.clone();
                ids[m] = p as u32;
                let ids: Vec<u32> = ids.into_iter().filter(|i| Some(*i) != pad).collect();
                row_out.push(FillMaskCandidate {
                    score: probs[p] as f64,
                    token: p as u32,
                    token_str: self.tokenizer.decode(&[p as u32], false)?,
                    sequence: self.tokenizer.decode(&ids, single)?,
                });
            }
            result.push(row_out);
        }
        Ok(result)
    }
}

impl Pipeline for FillMaskPipeline {
    fn task(&self) -> &'static str {
        "fill_mask"
    }

    fn run(&self, inputs: &[PipelineInput], opts: &CallOptions) -> Result<Vec<Value>> {
        opts.reject("fill_mask", &["top_k"])?;
        let k = opts.top_k_checked()?.unwrap_or(Self::DEFAULT_TOP_K);
        inputs
            .iter()
            .map(|i| {
                let r = self.call(i.text("fill_mask")?, k)?;
                // One mask: a list of candidates; several: a list per mask (both libraries).
                Ok(if r.len() == 1 {
                    serde_json::to_value(&r[0])?
                } else {
                    serde_json::to_value(&r)?
                })
            })
            .collect()
    }
}
