//! `feature_extraction`: hidden states of a text, as transformers' pipeline returns them
//! (`[1][len][hidden]`), or a sentence embedding pooled as sentence-transformers does (mean
//! over real tokens or `[CLS]`, optionally L2-normalised), honouring a directory's
//! `modules.json` and `1_Pooling/config.json`.
use std::path::Path;

use mf_core::{invalid, MfError, Result};
use mf_models::TaskModel;
use mf_tokenizers::Tokenizer;
use serde_json::Value;

use crate::task::{
    encode_one, forward_rows, to_vec_f32, CallOptions, Pipeline, PipelineInput, Pooling,
};

/// A base model with its tokenizer and default pooling.
pub struct FeatureExtractionPipeline {
    model: Box<dyn TaskModel>,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
}

/// The pooling and normalisation a sentence-transformers directory declares, if it is one.
pub fn sentence_transformers_config(dir: &Path) -> Result<Option<(Pooling, bool)>> {
    let modules = dir.join("modules.json");
    if !modules.is_file() {
        return Ok(None);
    }
    let m: Value = mf_core::config::read_json(&modules)?;
    let list = m
        .as_array()
        .ok_or_else(|| MfError::config(modules.display(), "modules.json is not a list"))?;
    let ty = |suffix: &str| {
        list.iter()
            .find(|e| e["type"].as_str().is_some_and(|t| t.ends_with(suffix)))
    };
    let normalize = ty("Normalize").is_some();
    let pooling = match ty("Pooling") {
        None => Pooling::None,
        Some(p) => {
            let sub = p["path"].as_str().unwrap_or("1_Pooling");
            let path = dir.join(sub).join("config.json");
            let c: Value = mf_core::config::read_json(&path)?;
            let on = |k: &str| c[k].as_bool().unwrap_or(false);
            if on("pooling_mode_cls_token") {
                Pooling::Cls
            } else if on("pooling_mode_mean_tokens") {
                Pooling::Mean
            } else {
                return Err(MfError::config(
                    path.display(),
                    "only pooling_mode_mean_tokens and pooling_mode_cls_token are supported",
                ));
            }
        }
    };
    Ok(Some((pooling, normalize)))
}

impl FeatureExtractionPipeline {
    /// Assembles the pipeline over any model that returns hidden states; `pooling` and
    /// `normalize` are the defaults for calls that do not choose.
    pub fn new(
        model: Box<dyn TaskModel>,
        tokenizer: Tokenizer,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Self> {
        Ok(FeatureExtractionPipeline {
            model,
            tokenizer,
            pooling,
            normalize,
        })
    }

    /// Hidden states `[len][hidden]` of `text`.
    pub fn hidden_states(&self, text: &str) -> Result<Vec<Vec<f32>>> {
        let row = encode_one(&self.tokenizer, text, None, None)?;
        let out = forward_rows(self.model.as_ref(), &[&row])?;
        let h = out
            .last_hidden_state
            .as_ref()
            .ok_or_else(|| invalid("this model returns no hidden states"))?
            .get(0);
        let d = h.size()[1] as usize;
        Ok(to_vec_f32(&h)?.chunks(d).map(|c| c.to_vec()).collect())
    }

    /// The pooled sentence embedding of `text`.
    pub fn embed(&self, text: &str, pooling: Pooling, normalize: bool) -> Result<Vec<f32>> {
        let h = self.hidden_states(text)?;
        let mut v = match pooling {
            Pooling::Cls => h[0].clone(),
            Pooling::Mean => {
                let n = h.len() as f32;
                (0..h[0].len())
                    .map(|j| h.iter().map(|r| r[j]).sum::<f32>() / n)
                    .collect()
            }
            Pooling::None => {
                return Err(invalid(
                    "pooling none gives hidden states, not an embedding",
                ))
            }
        };
        if normalize {
            // torch.nn.functional.normalize: x / max(||x||, 1e-12).
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(v)
    }
}

impl Pipeline for FeatureExtractionPipeline {
    fn task(&self) -> &'static str {
        "feature_extraction"
    }

    fn run(&self, inputs: &[PipelineInput], opts: &CallOptions) -> Result<Vec<Value>> {
        opts.reject("feature_extraction", &["pooling", "normalize"])?;
        let pooling = opts.pooling.unwrap_or(self.pooling);
        let normalize = opts.normalize || (opts.pooling.is_none() && self.normalize);
        if normalize && pooling == Pooling::None {
            return Err(invalid("--normalize needs a pooling (mean or cls)"));
        }
        inputs
            .iter()
            .map(|i| {
                let text = i.text("feature_extraction")?;
                Ok(match pooling {
                    Pooling::None => serde_json::to_value(vec![self.hidden_states(text)?])?,
                    p => serde_json::to_value(self.embed(text, p, normalize)?)?,
                })
            })
            .collect()
    }
}
