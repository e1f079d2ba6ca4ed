//! The interface every causal language model implements, used by generation, pipelines and
//! the trainer.
use std::path::Path;

use mf_core::checkpoint::{save_safetensors, WEIGHTS_NAME};
use mf_core::{DType, MfError, Result};
use tch::{Kind, Tensor};

use crate::layers::KvCache;
use crate::task::PreTrainedModel;

/// Inputs of one forward pass.
#[derive(Debug, Default)]
pub struct ForwardInput<'a> {
    /// Token ids `[batch, len]` (int64).
    pub input_ids: Option<&'a Tensor>,
    /// 1 for real tokens, 0 for padding, over all positions so far `[batch, past + len]`.
    pub attention_mask: Option<&'a Tensor>,
    /// Position of each token `[batch, len]`; defaults to `past..past + len`.
    pub position_ids: Option<&'a Tensor>,
    /// Apply dropout (training).
    pub train: bool,
    /// Compute logits for the last position only: the generation fast path, run under
    /// `no_grad` (no gradient flows through it).
    pub last_only: bool,
}

impl<'a> ForwardInput<'a> {
    /// Only token ids: no padding, positions continue from the cache, inference mode.
    pub fn ids(input_ids: &'a Tensor) -> Self {
        ForwardInput {
            input_ids: Some(input_ids),
            ..Default::default()
        }
    }
}

/// A decoder-only language model producing next-token logits. Weights IO, device and dtype,
/// parameters and LoRA layers come from its [`PreTrainedModel`] base.
pub trait CausalLM: PreTrainedModel {
    /// Logits `[batch, len, vocab]`; with a cache, keys/values of the new positions are
    /// appended and earlier positions are read from it.
    fn forward(&self, input: &ForwardInput<'_>, cache: Option<&mut KvCache>) -> Result<Tensor>;
    /// An empty cache sized for `capacity` positions.
    fn new_cache(&self, capacity: usize) -> KvCache;
    /// Vocabulary size (logit width).
    fn vocab_size(&self) -> usize;
    /// Longest sequence the position embeddings cover, if bounded.
    fn max_positions(&self) -> Option<usize>;
    /// Default generation settings from the model config.
    fn generation_config(&self) -> crate::generation::GenerationConfig;
    /// The model's config, for runtimes that rebuild it elsewhere (the parallel runtime);
    /// `None` for families that do not offer it.
    fn model_config(&self) -> Option<crate::ModelConfig> {
        None
    }
    /// The final hidden states `[batch, len, hidden]` (after the final norm), the LM head's
    /// input; the last position only under `last_only`. Families that do not split their
    /// forward this way keep the default, an error.
    fn hidden_states(
        &self,
        _input: &ForwardInput<'_>,
        _cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        Err(mf_core::invalid(format!(
            "the {} model does not expose its hidden states",
            self.model_type()
        )))
    }
    /// The LM head as a plain `[vocab, hidden]` matrix (a view: gradients reach the weight);
    /// `None` where the head is more than a matrix (a bias, a LoRA adapter) or the family does
    /// not offer [`CausalLM::hidden_states`].
    fn head_matrix(&self) -> Option<Tensor> {
        None
    }
    /// The hidden states with the head matrix, for a loss that never materialises the
    /// logits; `None` without a [`CausalLM::head_matrix`].
    fn forward_hidden(&self, input: &ForwardInput<'_>) -> Result<Option<(Tensor, Tensor)>> {
        match self.head_matrix() {
            Some(w) => Ok(Some((self.hidden_states(input, None)?, w))),
            None => Ok(None),
        }
    }
    /// Mean cross-entropy of the prediction at each position against `targets [batch, len]`
    /// (the id expected there, `-100` ignored), through the fused chunked LM-head loss
    /// (`layers::lm_loss`) where the family offers [`CausalLM::forward_hidden`], else through
    /// the full logits.
    fn next_token_loss(&self, input: &ForwardInput<'_>, targets: &Tensor) -> Result<Tensor> {
        let n = crate::layers::lm_loss::counted_targets(targets)?;
        if let Some((h, w)) = self.forward_hidden(input)? {
            return crate::layers::lm_head_cross_entropy(&h, &w, targets, n as f64, None);
        }
        crate::task::cross_entropy(&self.forward(input, None)?, targets)
    }
}

/// Writes a Hugging Face model directory: `model.safetensors` (with PyTorch's `format: pt`
/// metadata, which transformers checks) and `config.json` with `torch_dtype` from `kind`.
pub(crate) fn save_hf_dir(
    dir: &Path,
    tensors: &[(String, Tensor)],
    mut config: serde_json::Value,
    kind: Kind,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| MfError::io(dir, e))?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(dir.join(WEIGHTS_NAME), tensors, Some(meta))?;
    config["torch_dtype"] = serde_json::Value::String(
        match DType::from_kind(kind) {
            Some(DType::BF16) => "bfloat16",
            Some(DType::F16) => "float16",
            _ => "float32",
        }
        .into(),
    );
    mf_core::config::write_json(dir.join("config.json"), &config)
}
