//! GLM-4 (transformers' `GlmForCausalLM`, `model_type` `glm`, e.g. THUDM/glm-4-9b-hf):
//! RMSNorm pre-norm blocks, grouped-query attention with q/k/v bias, rotary positions on only
//! part of each head (`partial_rotary_factor`, 0.5 for GLM-4) in the interleaved pair layout,
//! a SwiGLU MLP with a fused `gate_up_proj`, untied head. Parameter names and layouts are
//! Hugging Face's, so HF checkpoints load and ours load in transformers.
//!
//! Tensor parallelism: q/k/v/gate_up are column-parallel and o/down row-parallel, heads placed
//! as in LLaMA ([`HeadShard`]). `gate_up_proj` stacks the gate rows over the up rows, so a
//! rank's slice of it is its gate rows followed by its up rows (two pieces of the HF tensor),
//! which keeps the `chunk(2)` in the forward pass rank-local.
use std::collections::BTreeMap;
use std::path::Path;

use mf_core::checkpoint::SafeTensors;
use mf_core::{invalid, DType, Device, MfError, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::generation::GenerationConfig;
use crate::layers::params::{prefixed_candidates, Init, ParamBuilder, Params, Vars};
use crate::layers::{
    apply_rotary_interleaved, attention_mask, linear, sdpa, AttnMask, ColumnParallelLinear,
    HeadShard, KvCache, RmsNorm, RopeScaling, RotaryEmbedding, RowParallelLinear, TensorParallel,
    WeightLayout,
};
use crate::llama::{ids, opt_id, RopeScalingConfig};
use crate::model::{CausalLM, ForwardInput};
use crate::task::{PreTrainedModel, Task};

/// GLM-4 hyperparameters under Hugging Face `config.json` keys (transformers 4.x top-level
/// `rope_theta` / `partial_rotary_factor` and 5.x `rope_parameters` both read), also accepting
/// MindFormers' names (`num_layers`, `num_heads`, `n_kv_heads`, `ffn_hidden_size`,
/// `seq_length`, `use_past`, `checkpoint_name_or_path`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GlmConfig {
    /// Always `glm`.
    pub model_type: String,
    /// Vocabulary size.
    #[serde(alias = "padded_vocab_size")]
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width (each of gate and up).
    #[serde(alias = "ffn_hidden_size")]
    pub intermediate_size: usize,
    /// Number of decoder layers.
    #[serde(alias = "num_layers")]
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    #[serde(alias = "num_heads")]
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    #[serde(alias = "n_kv_heads", alias = "multi_query_group_num")]
    pub num_key_value_heads: usize,
    /// Head width; `None` means `hidden_size / num_attention_heads`.
    #[serde(alias = "kv_channels")]
    pub head_dim: Option<usize>,
    /// Context length of pretraining (RoPE itself is unbounded).
    #[serde(alias = "seq_length")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(alias = "layernorm_epsilon")]
    pub rms_norm_eps: f64,
    /// RoPE base (transformers 4.x spelling; `rope_parameters.rope_theta` wins when given).
    pub rope_theta: f64,
    /// Fraction of each head that is rotated (4.x spelling; `rope_parameters` wins).
    pub partial_rotary_factor: f64,
    /// RoPE type, base and partial factor, transformers 5.x spelling.
    pub rope_parameters: Option<RopeScalingConfig>,
    /// Bias on q, k and v (never on o).
    #[serde(alias = "add_qkv_bias")]
    pub attention_bias: bool,
    /// Dropout on attention probabilities (training only).
    pub attention_dropout: f64,
    /// MLP activation (`silu`; also `gelu`, `gelu_pytorch_tanh`, `relu`).
    pub hidden_act: String,
    /// LM head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// Std of the normal init.
    pub initializer_range: f64,
    /// Beginning-of-sequence id.
    #[serde(deserialize_with = "opt_id")]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s) (GLM-4 lists several).
    #[serde(deserialize_with = "ids")]
    pub eos_token_id: Vec<u32>,
    /// Padding id.
    #[serde(deserialize_with = "opt_id")]
    pub pad_token_id: Option<u32>,
    /// Use the KV cache when generating.
    #[serde(alias = "use_past")]
    pub use_cache: bool,
    /// A preset name or directory whose weights `GlmForCausalLM::new` loads, as in
    /// MindFormers; empty means random initialisation.
    pub checkpoint_name_or_path: String,
    /// Hugging Face hub repository of the preset's weights.
    pub hub_repo: Option<String>,
    /// Other `config.json` keys, kept so a saved config round-trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for GlmConfig {
    /// transformers' `GlmConfig()` defaults: GLM-4-9B shapes.
    fn default() -> Self {
        GlmConfig {
            model_type: "glm".into(),
            vocab_size: 151552,
            hidden_size: 4096,
            intermediate_size: 13696,
            num_hidden_layers: 40,
            num_attention_heads: 32,
            num_key_value_heads: 2,
            head_dim: Some(128),
            max_position_embeddings: 131072,
            rms_norm_eps: 1.5625e-7,
            rope_theta: 10000.0,
            partial_rotary_factor: 0.5,
            rope_parameters: None,
            attention_bias: true,
            attention_dropout: 0.0,
            hidden_act: "silu".into(),
            tie_word_embeddings: false,
            initializer_range: 0.02,
            bos_token_id: None,
            eos_token_id: vec![151329, 151336, 151338],
            pad_token_id: Some(151329),
            use_cache: true,
            checkpoint_name_or_path: String::new(),
            hub_repo: None,
            extra: BTreeMap::new(),
        }
    }
}

/// Keys of HF's config that are recomputed on save.
const NOT_SAVED: &[&str] = &[
    "architectures",
    "torch_dtype",
    "dtype",
    "transformers_version",
];

impl GlmConfig {
    /// `GlmConfig.from_pretrained(name_or_dir)`: a preset name or a directory's `config.json`.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Self> {
        crate::auto::AutoConfig::from_pretrained(name_or_dir)?.into_glm()
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: GlmConfig = mf_core::config::read_json(path)?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// Head width.
    pub fn head_size(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// RoPE base, from `rope_parameters` when present.
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .unwrap_or(self.rope_theta)
    }

    /// Rotated fraction of each head, from `rope_parameters` when present.
    pub fn rotary_factor(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.extra.get("partial_rotary_factor"))
            .and_then(|v| v.as_f64())
            .unwrap_or(self.partial_rotary_factor)
    }

    /// Rotated features per head (`int(head_dim * partial_rotary_factor)`, as transformers).
    pub fn rotary_dim(&self) -> usize {
        (self.head_size() as f64 * self.rotary_factor()) as usize
    }

    /// Checks the values make a buildable model.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let err = |m: String| Err(MfError::config(origin, m));
        if self.model_type != "glm" {
            return err(format!("model_type is '{}', not 'glm'", self.model_type));
        }
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.intermediate_size == 0
            || self.num_hidden_layers == 0
            || self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || self.head_dim == Some(0)
            || self.max_position_embeddings == 0
        {
            return err(
                "vocab_size, hidden_size, intermediate_size, num_hidden_layers, \
                 num_attention_heads, num_key_value_heads, head_dim and max_position_embeddings \
                 must be positive"
                    .into(),
            );
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return err(format!(
                "num_attention_heads {} is not divisible by num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        let f = self.rotary_factor();
        if !(f > 0.0 && f <= 1.0) {
            return err(format!("partial_rotary_factor {f} is not in (0, 1]"));
        }
        let rd = self.rotary_dim();
        if rd == 0 || !rd.is_multiple_of(2) {
            return err(format!(
                "rotary dimension {rd} (head_dim {} x partial_rotary_factor {f}) must be even \
                 and positive",
                self.head_size()
            ));
        }
        if let Some(p) = &self.rope_parameters {
            if p.kind() != "default" {
                return err(format!(
                    "rope type '{}' is not supported for glm; supported: default",
                    p.kind()
                ));
            }
        }
        if !(0.0..1.0).contains(&self.attention_dropout) {
            return err(format!(
                "attention_dropout = {} is not in [0, 1)",
                self.attention_dropout
            ));
        }
        crate::layers::Activation::from_name(&self.hidden_act)
            .map_err(|e| MfError::config(origin, e.to_string()))?;
        RotaryEmbedding::new(rd, self.theta(), RopeScaling::None)
            .map_err(|e| MfError::config(origin, e.to_string()))?;
        Ok(())
    }

    /// Parameter count of the model this config builds, computed without allocating it.
    pub fn num_parameters(&self) -> usize {
        let (h, v, l, f) = (
            self.hidden_size,
            self.vocab_size,
            self.num_hidden_layers,
            self.intermediate_size,
        );
        let (q, kv) = (
            self.num_attention_heads * self.head_size(),
            self.num_key_value_heads * self.head_size(),
        );
        let attn = h * q + 2 * h * kv + q * h + if self.attention_bias { q + 2 * kv } else { 0 };
        let mlp = 3 * h * f;
        let embed = v * h * if self.tie_word_embeddings { 1 } else { 2 };
        embed + l * (attn + mlp + 2 * h) + h
    }

    /// The Hugging Face `config.json` content (HF key names). RoPE settings are written in
    /// both spellings: `rope_parameters` for transformers 5.x, top-level `rope_theta` and
    /// `partial_rotary_factor` for 4.x.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::Map::new();
        for (k, val) in &self.extra {
            if !NOT_SAVED.contains(&k.as_str()) {
                v.insert(k.clone(), val.clone());
            }
        }
        let eos = match self.eos_token_id.as_slice() {
            [one] => serde_json::json!(one),
            [] => serde_json::Value::Null,
            many => serde_json::json!(many),
        };
        let j = serde_json::json!({
            "model_type": "glm",
            "architectures": ["GlmForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_size(),
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.theta(),
            "partial_rotary_factor": self.rotary_factor(),
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": self.theta(),
                "partial_rotary_factor": self.rotary_factor(),
            },
            "attention_bias": self.attention_bias,
            "attention_dropout": self.attention_dropout,
            "hidden_act": self.hidden_act,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "use_cache": self.use_cache,
        });
        if let serde_json::Value::Object(m) = j {
            v.extend(m);
        }
        serde_json::Value::Object(v)
    }
}

#[derive(Debug)]
struct Layer {
    input_layernorm: RmsNorm,
    q_proj: ColumnParallelLinear,
    k_proj: ColumnParallelLinear,
    v_proj: ColumnParallelLinear,
    o_proj: RowParallelLinear,
    post_attention_layernorm: RmsNorm,
    gate_up_proj: ColumnParallelLinear,
    down_proj: RowParallelLinear,
}

/// The GLM-4 language model with its LM head.
pub struct GlmForCausalLM {
    config: GlmConfig,
    params: Params,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// `None` when tied to `embed_tokens`.
    lm_head: Option<ColumnParallelLinear>,
    /// RoPE over the rotated part of each head only.
    rope: RotaryEmbedding,
    heads: HeadShard,
    head_dim: i64,
    act: crate::layers::Activation,
}

impl std::fmt::Debug for GlmForCausalLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlmForCausalLM")
            .field("config", &self.config)
            .field("parameters", &self.num_parameters())
            .finish()
    }
}

impl GlmForCausalLM {
    /// A randomly initialised model (normal(0, initializer_range), norms 1, biases 0) on the
    /// CPU in f32; with `checkpoint_name_or_path` set, it is built from that checkpoint's
    /// weights instead.
    pub fn new(config: &GlmConfig) -> Result<Self> {
        if config.checkpoint_name_or_path.is_empty() {
            return Self::with_parallel(config, TensorParallel::single());
        }
        let dir = crate::auto::resolve_model_dir(&config.checkpoint_name_or_path)?;
        let ckpt = SafeTensors::open(&dir)?;
        let single = TensorParallel::single();
        Self::build(config, single, Some(&ckpt), Device::Cpu, DType::F32)
    }

    /// A randomly initialised model at a tensor-parallel position.
    pub fn with_parallel(config: &GlmConfig, tp: TensorParallel) -> Result<Self> {
        Self::build(config, tp, None, Device::Cpu, DType::F32)
    }

    /// The model with each parameter read from `ckpt` at `dtype` on `device`, or randomly
    /// initialised without one.
    fn build(
        config: &GlmConfig,
        tp: TensorParallel,
        ckpt: Option<&SafeTensors>,
        device: Device,
        dtype: DType,
    ) -> Result<Self> {
        config.validate("GlmConfig")?;
        let heads = HeadShard::plan(
            config.num_attention_heads,
            config.num_key_value_heads,
            tp.rank,
            tp.world_size,
        )?;
        let hd = config.head_size();
        let mut rope =
            RotaryEmbedding::new(config.rotary_dim(), config.theta(), RopeScaling::None)?;
        // Checkpoints saved from `GlmModel` have no `model.` prefix.
        let candidates = |n: &str| prefixed_candidates(n, "model");
        let pb = ParamBuilder::causal(ckpt, &candidates).at(device, dtype)?;
        let root = Vars::root(&pb);
        let m = &root / "model";
        let (h, std, f) = (
            config.hidden_size,
            config.initializer_range,
            config.intermediate_size,
        );
        let (q_out, kv_out) = (config.num_attention_heads * hd, heads.kv_heads * hd);
        let embed_tokens = (&m / "embed_tokens").var(
            "weight",
            &[config.vocab_size as i64, h as i64],
            Init::Normal(std),
        )?;
        let lay = WeightLayout::OutIn;
        let eps = config.rms_norm_eps;
        let bias = config.attention_bias;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = &m / "layers" / i;
            let (a, p) = (&l / "self_attn", &l / "mlp");
            // k/v hold this rank's kv heads, which are replicated rather than split when
            // there are more ranks than kv heads.
            let kv = |name: &str| {
                ColumnParallelLinear::with_local_out(&(&a / name), h, kv_out, bias, lay, tp, std)
            };
            layers.push(Layer {
                input_layernorm: RmsNorm::new(&(&l / "input_layernorm"), h, eps)?,
                q_proj: ColumnParallelLinear::new(&(&a / "q_proj"), h, q_out, bias, lay, tp, std)?,
                k_proj: kv("k_proj")?,
                v_proj: kv("v_proj")?,
                o_proj: RowParallelLinear::new(&(&a / "o_proj"), q_out, h, false, lay, tp, std)?,
                post_attention_layernorm: RmsNorm::new(&(&l / "post_attention_layernorm"), h, eps)?,
                gate_up_proj: ColumnParallelLinear::new(
                    &(&p / "gate_up_proj"),
                    h,
                    2 * f,
                    false,
                    lay,
                    tp,
                    std,
                )?,
                down_proj: RowParallelLinear::new(&(&p / "down_proj"), f, h, false, lay, tp, std)?,
            });
        }
        let norm = RmsNorm::new(&(&m / "norm"), h, eps)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(ColumnParallelLinear::new(
                &(&root / "lm_head"),
                h,
                config.vocab_size,
                false,
                lay,
                tp,
                std,
            )?)
        };
        rope.to_device(pb.device());
        let tied = config.tie_word_embeddings;
        let params = pb.finish(&|n| ignored(tied, n))?;
        Ok(GlmForCausalLM {
            act: crate::layers::Activation::from_name(&config.hidden_act)?,
            head_dim: hd as i64,
            heads,
            rope,
            config: config.clone(),
            params,
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    /// `GlmForCausalLM.from_pretrained(name_or_dir)`: a preset name (weights from
    /// `$MF_HOME`, the HF cache, or the hub) or a Hugging Face GLM directory.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Self> {
        let dir = crate::auto::resolve_model_dir(name_or_dir)?;
        Self::from_dir(&dir)
    }

    /// Loads `config.json` + safetensors weights (single file or sharded) from a directory,
    /// on the CPU in f32.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_dir_on(dir, Device::Cpu, DType::F32)
    }

    /// Loads a directory with each parameter read straight from the checkpoint at `dtype` on
    /// `device` (no f32 copy first).
    pub fn from_dir_on(dir: &Path, device: Device, dtype: DType) -> Result<Self> {
        let mut config = GlmConfig::from_json_file(crate::auto::config_file(dir)?)?;
        // The directory's weights are read below, not a second time through the config.
        config.checkpoint_name_or_path.clear();
        let ckpt = SafeTensors::open(dir)?;
        Self::build(
            &config,
            TensorParallel::single(),
            Some(&ckpt),
            device,
            dtype,
        )
    }

    /// The config the model was built from.
    pub fn config(&self) -> &GlmConfig {
        &self.config
    }

    /// A variable store over the model's parameters (for tch optimizers).
    pub fn var_store(&self) -> &nn::VarStore {
        self.params.var_store()
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        i: usize,
        l: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttnMask,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.size3()?;
        let hd = self.head_dim;
        let (nq, nkv) = (self.heads.q_heads as i64, self.heads.kv_heads as i64);
        let h = l.input_layernorm.forward(x);
        let split = |y: Tensor, n: i64| y.view([b, t, n, hd]).transpose(1, 2);
        let q = apply_rotary_interleaved(&split(l.q_proj.forward_t(&h, train), nq), cos, sin);
        let k = apply_rotary_interleaved(&split(l.k_proj.forward_t(&h, train), nkv), cos, sin);
        let v = split(l.v_proj.forward_t(&h, train), nkv);
        let (k, v) = match cache {
            Some(c) => c.append(i, &k, &v)?,
            None => (k, v),
        };
        let dropout = if train {
            self.config.attention_dropout
        } else {
            0.0
        };
        let attn = sdpa(&q, &k, &v, mask, dropout)
            .transpose(1, 2)
            .reshape([b, t, nq * hd]);
        let x = x + l.o_proj.forward_t(&attn, train);
        let h = l.post_attention_layernorm.forward(&x);
        let gate_up = l.gate_up_proj.forward_t(&h, train).chunk(2, -1);
        let m = &gate_up[1] * self.act.forward(&gate_up[0]);
        Ok(x + l.down_proj.forward_t(&m, train))
    }
}

impl CausalLM for GlmForCausalLM {
    /// The final hidden states, the LM head's input (the last position only under
    /// `last_only`).
    fn hidden_states(
        &self,
        input: &ForwardInput<'_>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let ids = input
            .input_ids
            .ok_or_else(|| invalid("GLM forward needs input_ids"))?;
        let dev = self.embed_tokens.device();
        let ids = ids.to_device(dev);
        let (b, t) = ids.size2().map_err(|_| {
            invalid(format!(
                "input_ids must be [batch, len], got {:?}",
                ids.size()
            ))
        })?;
        let past = cache.as_ref().map_or(0, |c| c.len()) as i64;
        if let Some(am) = input.attention_mask {
            if am.size() != [b, past + t] {
                return Err(MfError::Shape(format!(
                    "attention_mask is {:?}, expected [{b}, {}]",
                    am.size(),
                    past + t
                )));
            }
        }
        let pos = match input.position_ids {
            Some(p) if p.size() != [b, t] => {
                return Err(MfError::Shape(format!(
                    "position_ids is {:?}, expected [{b}, {t}]",
                    p.size()
                )))
            }
            Some(p) => p.to_device(dev),
            None => Tensor::arange_start(past, past + t, (Kind::Int64, dev))
                .unsqueeze(0)
                .expand([b, t], false),
        };
        let max_id = self.config.vocab_size as i64;
        if t > 0 && (ids.max().int64_value(&[]) >= max_id || ids.min().int64_value(&[]) < 0) {
            return Err(invalid(format!(
                "input_ids contain a token id outside [0, {max_id})"
            )));
        }
        let mut x = Tensor::embedding(&self.embed_tokens, &ids, -1, false, false);
        let (cos, sin) = self.rope.cos_sin_interleaved(&pos, x.kind());
        let mask = attention_mask(input.attention_mask, past, t, dev);
        for (i, l) in self.layers.iter().enumerate() {
            x = self.layer_forward(
                i,
                l,
                &x,
                &cos,
                &sin,
                &mask,
                cache.as_deref_mut(),
                input.train,
            )?;
        }
        if let Some(c) = cache {
            c.advance(t as usize);
        }
        let x = if input.last_only {
            x.narrow(1, t - 1, 1)
        } else {
            x
        };
        let x = self.norm.forward(&x);
        Ok(x)
    }

    /// The head as a plain `[vocab, hidden]` matrix, when it is one.
    fn head_matrix(&self) -> Option<Tensor> {
        match &self.lm_head {
            Some(head) => head.as_matrix(),
            None => Some(self.embed_tokens.shallow_clone()),
        }
    }

    fn forward(&self, input: &ForwardInput<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = self.hidden_states(input, cache)?;
        Ok(match &self.lm_head {
            Some(head) => head.forward(&x),
            None => linear(&x, &self.embed_tokens, None, WeightLayout::OutIn),
        })
    }

    fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(self.config.num_hidden_layers, capacity)
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// RoPE has no learned position table, so length is not bounded by the model.
    fn max_positions(&self) -> Option<usize> {
        None
    }

    fn generation_config(&self) -> GenerationConfig {
        GenerationConfig {
            bos_token_id: self.config.bos_token_id,
            eos_token_id: self.config.eos_token_id.clone(),
            pad_token_id: self
                .config
                .pad_token_id
                .or(self.config.eos_token_id.first().copied()),
            use_past: self.config.use_cache,
            ..GenerationConfig::default()
        }
    }
}

/// Checkpoint tensors that are not parameters: RoPE buffers, a tied head's copy.
fn ignored(tied: bool, name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (tied && name == "lm_head.weight")
}

impl PreTrainedModel for GlmForCausalLM {
    fn model_type(&self) -> &str {
        "glm"
    }

    fn task(&self) -> Task {
        Task::CausalLM
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.to_hf_json()
    }

    fn device(&self) -> tch::Device {
        self.embed_tokens.device()
    }

    fn to(&mut self, device: Device, dtype: DType) -> Result<()> {
        self.params.to(device, dtype)?;
        // The RoPE table is not a parameter and stays f32.
        self.rope.to_device(device.to_tch()?);
        Ok(())
    }

    fn num_parameters(&self) -> usize {
        self.params.numel()
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params.list()
    }

    /// Accepts HF names with or without the `model.` prefix; a tied checkpoint's
    /// `lm_head.weight` and `rotary_emb.inv_freq` buffers are skipped.
    fn load_weights(&self, ckpt: &SafeTensors) -> Result<()> {
        let rename = |name: &str| -> Option<String> {
            if name.starts_with("model.") || name.starts_with("lm_head.") {
                Some(name.to_string())
            } else {
                Some(format!("model.{name}"))
            }
        };
        let tied = self.lm_head.is_none();
        self.params.load(ckpt, &rename, &|n| ignored(tied, n))
    }

    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        self.params.save_pretrained(dir, self.config.to_hf_json())
    }

    fn lora_layers(&mut self) -> Vec<(String, &mut dyn crate::lora::LoraHost)> {
        let mut v: Vec<(String, &mut dyn crate::lora::LoraHost)> = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            v.push((format!("{p}.self_attn.q_proj"), &mut l.q_proj));
            v.push((format!("{p}.self_attn.k_proj"), &mut l.k_proj));
            v.push((format!("{p}.self_attn.v_proj"), &mut l.v_proj));
            v.push((format!("{p}.self_attn.o_proj"), &mut l.o_proj));
            v.push((format!("{p}.mlp.gate_up_proj"), &mut l.gate_up_proj));
            v.push((format!("{p}.mlp.down_proj"), &mut l.down_proj));
        }
        v
    }
}

impl crate::auto::FamilyConfig for GlmConfig {
    fn family_name() -> &'static str {
        "glm"
    }

    fn model_type(&self) -> &'static str {
        "glm"
    }

    fn config_json(&self) -> serde_json::Value {
        self.to_hf_json()
    }
}

impl crate::ModelConfig {
    /// The GLM config, or an error naming the actual family.
    pub fn into_glm(self) -> Result<GlmConfig> {
        self.into_config()
    }
}

/// The registry entry of this family (see [`crate::auto::FAMILIES`]).
pub const FAMILY: crate::auto::Family = crate::auto::Family {
    name: "glm",
    title: "GLM-4",
    model_types: &["glm"],
    presets: crate::presets::GLM,
    parse_preset: |p, origin| {
        let mut c = crate::auto::preset_config(&p.config, origin, |c: &GlmConfig| &c.extra)?;
        c.hub_repo = p.hub_repo.clone();
        c.validate(origin)?;
        Ok(crate::ModelConfig::new(c))
    },
    parse_json: |v, origin| {
        let c: GlmConfig = crate::auto::json_config(v, origin)?;
        c.validate(origin)?;
        Ok(crate::ModelConfig::new(c))
    },
    read_json: |path| Ok(crate::ModelConfig::new(GlmConfig::from_json_file(path)?)),
    causal_from_config: Some(|config| {
        Ok(Box::new(GlmForCausalLM::new(
            config.downcast::<GlmConfig>()?,
        )?))
    }),
    tasks: &[crate::task::Task::CausalLM],
    load_causal: Some(|dir, device, dtype| {
        Ok(Box::new(GlmForCausalLM::from_dir_on(dir, device, dtype)?))
    }),
    load_task: None,
    from_config: None,
    parallel: None,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_glm4_9b_and_rope_spellings_agree() {
        let c = GlmConfig::default();
        assert_eq!((c.head_size(), c.rotary_dim()), (128, 64));
        c.validate("default").unwrap();
        let v4: GlmConfig =
            serde_json::from_str(r#"{"rope_theta": 500000.0, "partial_rotary_factor": 0.25}"#)
                .unwrap();
        let v5: GlmConfig = serde_json::from_str(
            r#"{"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0,
                "partial_rotary_factor": 0.25}}"#,
        )
        .unwrap();
        assert_eq!((v4.theta(), v4.rotary_dim()), (500000.0, 32));
        assert_eq!((v5.theta(), v5.rotary_dim()), (500000.0, 32));
    }
}
