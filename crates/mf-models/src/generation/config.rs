//! `GenerationConfig` (MindFormers' fields and defaults) and per-call overrides.
use mf_core::{invalid, Result};
use serde::{Deserialize, Serialize};

/// How text is generated. Defaults follow MindFormers/transformers, except `use_past`, which
/// is on: the KV cache gives the same ids here and is much faster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationConfig {
    /// Total length (prompt + new tokens) to stop at; ignored when `max_new_tokens` is set.
    pub max_length: usize,
    /// Number of tokens to generate, whatever the prompt length.
    pub max_new_tokens: Option<usize>,
    /// Sample from the distribution instead of taking the most likely token.
    pub do_sample: bool,
    /// Keep only the `top_k` most likely tokens when sampling (0 disables).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` when sampling.
    pub top_p: f64,
    /// Divide logits by this before sampling.
    pub temperature: f64,
    /// Penalise tokens already present (>1 discourages repeats).
    pub repetition_penalty: f64,
    /// Beam width; 1 means greedy or sampling.
    pub num_beams: usize,
    /// Beam score length normalisation exponent.
    pub length_penalty: f64,
    /// Stop beam search as soon as `num_beams` hypotheses are finished.
    pub early_stopping: bool,
    /// Use the KV cache.
    pub use_past: bool,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids; generation of a row stops at any of them.
    pub eos_token_id: Vec<u32>,
    /// Id written after a row has finished and used for left padding.
    pub pad_token_id: Option<u32>,
    /// Seed of the sampling RNG (same seed, same text).
    pub seed: Option<u64>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_length: 20,
            max_new_tokens: None,
            do_sample: false,
            top_k: 50,
            top_p: 1.0,
            temperature: 1.0,
            repetition_penalty: 1.0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: false,
            use_past: true,
            bos_token_id: None,
            eos_token_id: Vec::new(),
            pad_token_id: None,
            seed: None,
        }
    }
}

/// Per-call changes to a `GenerationConfig` (e.g. the `do_sample=False` of
/// `text_generation("...", do_sample=False)`); `None` keeps the base value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationOverrides {
    /// See [`GenerationConfig::max_length`].
    pub max_length: Option<usize>,
    /// See [`GenerationConfig::max_new_tokens`].
    pub max_new_tokens: Option<usize>,
    /// See [`GenerationConfig::do_sample`].
    pub do_sample: Option<bool>,
    /// See [`GenerationConfig::top_k`].
    pub top_k: Option<usize>,
    /// See [`GenerationConfig::top_p`].
    pub top_p: Option<f64>,
    /// See [`GenerationConfig::temperature`].
    pub temperature: Option<f64>,
    /// See [`GenerationConfig::repetition_penalty`].
    pub repetition_penalty: Option<f64>,
    /// See [`GenerationConfig::num_beams`].
    pub num_beams: Option<usize>,
    /// See [`GenerationConfig::use_past`].
    pub use_past: Option<bool>,
    /// See [`GenerationConfig::eos_token_id`].
    pub eos_token_id: Option<Vec<u32>>,
    /// See [`GenerationConfig::pad_token_id`].
    pub pad_token_id: Option<u32>,
    /// See [`GenerationConfig::seed`].
    pub seed: Option<u64>,
}

impl GenerationConfig {
    /// A copy with the overrides applied.
    pub fn with(&self, o: &GenerationOverrides) -> GenerationConfig {
        let mut c = self.clone();
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = o.$f.clone() { c.$f = v; })* };
        }
        set!(
            max_length,
            do_sample,
            top_k,
            top_p,
            temperature,
            repetition_penalty,
            num_beams,
            use_past,
            eos_token_id
        );
        if o.max_new_tokens.is_some() {
            c.max_new_tokens = o.max_new_tokens;
        }
        if o.pad_token_id.is_some() {
            c.pad_token_id = o.pad_token_id;
        }
        if o.seed.is_some() {
            c.seed = o.seed;
        }
        c
    }

    /// Checks every value is in range.
    pub fn validate(&self) -> Result<()> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid(format!("top_p = {} must be in (0, 1]", self.top_p)));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(invalid(format!(
                "temperature = {} must be > 0",
                self.temperature
            )));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(invalid(format!(
                "repetition_penalty = {} must be > 0",
                self.repetition_penalty
            )));
        }
        if self.num_beams == 0 {
            return Err(invalid("num_beams must be at least 1"));
        }
        if self.num_beams > 1 && self.do_sample {
            return Err(invalid(
                "beam sampling (num_beams > 1 with do_sample) is not supported; use one or the other",
            ));
        }
        if self.max_new_tokens == Some(0) {
            return Err(invalid("max_new_tokens must be at least 1"));
        }
        if self.max_length == 0 {
            return Err(invalid("max_length must be at least 1"));
        }
        Ok(())
    }

    /// How many tokens to generate after a (padded) prompt of `prompt_len`.
    pub fn new_tokens(&self, prompt_len: usize) -> Result<usize> {
        match self.max_new_tokens {
            Some(n) => Ok(n),
            None if self.max_length > prompt_len => Ok(self.max_length - prompt_len),
            None => Err(invalid(format!(
                "the prompt has {prompt_len} tokens, already at max_length {}; raise max_length \
                 or set max_new_tokens",
                self.max_length
            ))),
        }
    }
}
