//! LLaMA (`LlamaForCausalLM`) and the checkpoints that share its layout (Qwen2, CodeLlama):
//! RMSNorm pre-norm blocks, rotary positions (with linear / dynamic NTK / llama3 scaling),
//! SwiGLU MLP, grouped-query attention, optional projection biases, tied or untied head.
//! Parameter names and layouts are Hugging Face's, so HF checkpoints load and ours load in
//! transformers.
//!
//! Tensor parallelism: q/k/v/gate/up are column-parallel and o/down row-parallel, so a rank
//! holds whole heads. Query heads split evenly; kv heads split while there are at least as
//! many as ranks and are replicated otherwise (see [`HeadShard`]).
use std::collections::BTreeMap;
use std::path::Path;

use mf_core::checkpoint::SafeTensors;
use mf_core::{invalid, DType, Device, MfError, Result};
use serde::{Deserialize, Deserializer, Serialize};
use tch::{nn, Kind, Tensor};

use crate::generation::GenerationConfig;
use crate::layers::params::{prefixed_candidates, Init, ParamBuilder, Params, Vars};
use crate::layers::{
    apply_rotary, attention_mask, linear, sdpa, AttnMask, ColumnParallelLinear, HeadShard, KvCache,
    RmsNorm, RopeScaling, RotaryEmbedding, RowParallelLinear, TensorParallel, WeightLayout,
};
use crate::model::{CausalLM, ForwardInput};
use crate::task::{PreTrainedModel, Task};

/// The `rope_scaling` (transformers 4.x) or `rope_parameters` (5.x) object of `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RopeScalingConfig {
    /// `default`, `linear`, `dynamic` or `llama3`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    /// The older spelling of `rope_type`; kept apart so configs carrying both still parse.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub legacy_type: Option<String>,
    /// Scaling factor (linear, dynamic, llama3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// llama3: low-frequency threshold divisor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    /// llama3: high-frequency threshold divisor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    /// llama3: pretraining context length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// RoPE base (transformers 5 keeps it here rather than at the top level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Other keys (e.g. `partial_rotary_factor`), checked and kept so a config round-trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl RopeScalingConfig {
    /// The scaling type, `default` when neither spelling is given.
    pub fn kind(&self) -> &str {
        self.rope_type
            .as_deref()
            .or(self.legacy_type.as_deref())
            .unwrap_or("default")
    }
}

/// LLaMA hyperparameters under Hugging Face `config.json` keys, also accepting MindFormers'
/// names (`seq_length`, `num_layers`, `num_heads`, `n_kv_heads`, `theta`, `qkv_has_bias`,
/// `use_past`, `batch_size`, `checkpoint_name_or_path`).
///
/// `LlamaConfig(batch_size=1, seq_length=2048, num_layers=2)` from MindFormers is
/// `LlamaConfig::default().with_seq_length(2048).with_num_layers(2)` or struct-update syntax.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlamaConfig {
    /// `llama`, or `qwen2` for Qwen2 checkpoints (q/k/v bias, no o bias).
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width; `None` derives it as MindFormers/Meta do from `multiple_of` and
    /// `ffn_dim_multiplier` (11008 for width 4096).
    #[serde(alias = "ffn_hidden_size")]
    pub intermediate_size: Option<usize>,
    /// MLP width rounding when `intermediate_size` is unset.
    pub multiple_of: usize,
    /// MLP width multiplier when `intermediate_size` is unset.
    pub ffn_dim_multiplier: Option<f64>,
    /// Number of decoder layers.
    #[serde(alias = "num_layers")]
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    #[serde(alias = "num_heads")]
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `None` means one per query head.
    #[serde(alias = "n_kv_heads")]
    pub num_key_value_heads: Option<usize>,
    /// Head width; `None` means `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    /// Context length of pretraining (RoPE itself is unbounded; dynamic scaling starts here).
    #[serde(alias = "seq_length", alias = "max_position_embedding")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(alias = "layernorm_epsilon")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(alias = "theta")]
    pub rope_theta: f64,
    /// RoPE scaling, transformers 4.x spelling.
    pub rope_scaling: Option<RopeScalingConfig>,
    /// RoPE type and base, transformers 5.x spelling (used when `rope_scaling` is absent).
    pub rope_parameters: Option<RopeScalingConfig>,
    /// MindFormers' RoPE extension (`None`, or `PI` for position interpolation by
    /// `scaling_factor`); `rope_scaling` is the Hugging Face way to say the same.
    pub extend_method: String,
    /// Interpolation factor for `extend_method = "PI"`.
    pub scaling_factor: f64,
    /// Bias on q, k, v and o projections (HF LLaMA's `attention_bias`).
    pub attention_bias: bool,
    /// Bias on q, k, v only (MindFormers' name; always on for Qwen2).
    #[serde(alias = "qkv_bias")]
    pub qkv_has_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// Dropout on attention probabilities (training only).
    pub attention_dropout: f64,
    /// LM head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence id.
    #[serde(deserialize_with = "opt_id")]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s) (LLaMA 3.1 lists several).
    #[serde(deserialize_with = "ids")]
    pub eos_token_id: Vec<u32>,
    /// Padding id.
    #[serde(deserialize_with = "opt_id")]
    pub pad_token_id: Option<u32>,
    /// MLP activation (`silu`; also `gelu`, `gelu_pytorch_tanh`, `relu`).
    pub hidden_act: String,
    /// Std of the normal init.
    pub initializer_range: f64,
    /// MindFormers' batch size (used by its static graphs; kept for config round-trips).
    pub batch_size: usize,
    /// Use the KV cache when generating.
    #[serde(alias = "use_cache")]
    pub use_past: bool,
    /// A preset name or directory whose weights `LlamaForCausalLM::new` loads, as in
    /// MindFormers; empty means random initialisation.
    pub checkpoint_name_or_path: String,
    /// Hugging Face hub repository of the preset's weights.
    pub hub_repo: Option<String>,
    /// Other `config.json` keys, kept so a saved config round-trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A token id that may be null, negative (meaning none) or absent.
pub(crate) fn opt_id<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u32>, D::Error> {
    let v = Option::<i64>::deserialize(d)?;
    Ok(v.and_then(|x| u32::try_from(x).ok()))
}

/// One id or a list of ids.
pub(crate) fn ids<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Option<i64>),
        Many(Vec<i64>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(v) => v.and_then(|x| u32::try_from(x).ok()).into_iter().collect(),
        OneOrMany::Many(v) => v
            .into_iter()
            .filter_map(|x| u32::try_from(x).ok())
            .collect(),
    })
}

impl Default for LlamaConfig {
    /// MindFormers' `LlamaConfig()` defaults: LLaMA-7B shapes, 2048 positions.
    fn default() -> Self {
        LlamaConfig {
            model_type: "llama".into(),
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: None,
            multiple_of: 256,
            ffn_dim_multiplier: None,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            rope_parameters: None,
            extend_method: "None".into(),
            scaling_factor: 1.0,
            attention_bias: false,
            qkv_has_bias: false,
            mlp_bias: false,
            attention_dropout: 0.0,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: vec![2],
            pad_token_id: Some(0),
            hidden_act: "silu".into(),
            initializer_range: 0.02,
            batch_size: 1,
            use_past: true,
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

impl LlamaConfig {
    /// `LlamaConfig.from_pretrained(name_or_dir)`: a preset name or a directory's `config.json`.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Self> {
        crate::auto::AutoConfig::from_pretrained(name_or_dir)?.into_llama()
    }

    /// Reads a Hugging Face `config.json` (LLaMA or Qwen2).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: LlamaConfig = mf_core::config::read_json(path)?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// MindFormers' `seq_length`.
    pub fn with_seq_length(mut self, n: usize) -> Self {
        self.max_position_embeddings = n;
        self
    }

    /// MindFormers' `num_layers`.
    pub fn with_num_layers(mut self, n: usize) -> Self {
        self.num_hidden_layers = n;
        self
    }

    /// MindFormers' `num_heads`.
    pub fn with_num_heads(mut self, n: usize) -> Self {
        self.num_attention_heads = n;
        self
    }

    /// MindFormers' `n_kv_heads`.
    pub fn with_n_kv_heads(mut self, n: usize) -> Self {
        self.num_key_value_heads = Some(n);
        self
    }

    /// Model width.
    pub fn with_hidden_size(mut self, n: usize) -> Self {
        self.hidden_size = n;
        self
    }

    /// MindFormers' `batch_size`.
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Whether this is a Qwen2 checkpoint.
    pub fn is_qwen2(&self) -> bool {
        self.model_type == "qwen2"
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Head width.
    pub fn head_size(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// MLP width (Meta's rule when `intermediate_size` is unset).
    pub fn ffn_size(&self) -> usize {
        if let Some(n) = self.intermediate_size {
            return n;
        }
        let mut hidden = 2 * (4 * self.hidden_size) / 3;
        if let Some(m) = self.ffn_dim_multiplier {
            hidden = (m * hidden as f64) as usize;
        }
        let m = self.multiple_of.max(1);
        hidden.div_ceil(m) * m
    }

    /// Bias on q/k/v.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.qkv_has_bias || self.is_qwen2()
    }

    /// Bias on o (Qwen2 has none).
    pub fn o_bias(&self) -> bool {
        self.attention_bias && !self.is_qwen2()
    }

    /// RoPE base and scaling, from whichever spelling the config uses.
    pub fn rope(&self) -> Result<(f64, RopeScaling)> {
        let err = |m: String| Err(invalid(m));
        let params = self.rope_scaling.as_ref().or(self.rope_parameters.as_ref());
        let theta = params.and_then(|p| p.rope_theta).unwrap_or(self.rope_theta);
        let Some(p) = params else {
            return match self.extend_method.as_str() {
                "None" | "" => Ok((theta, RopeScaling::None)),
                "PI" => Ok((
                    theta,
                    RopeScaling::Linear {
                        factor: self.scaling_factor,
                    },
                )),
                other => err(format!(
                    "extend_method '{other}' is not supported; use None, PI, or rope_scaling"
                )),
            };
        };
        if let Some(f) = p
            .extra
            .get("partial_rotary_factor")
            .and_then(|v| v.as_f64())
        {
            if f != 1.0 {
                return err(format!("partial_rotary_factor {f} is not supported"));
            }
        }
        let factor = |ty: &str| -> Result<f64> {
            match p.factor {
                Some(f) if f >= 1.0 => Ok(f),
                Some(f) => Err(invalid(format!("rope_scaling factor {f} must be >= 1"))),
                None => Err(invalid(format!("rope_scaling type '{ty}' needs a factor"))),
            }
        };
        let scaling = match p.kind() {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: factor("linear")?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: factor("dynamic")?,
                max_position_embeddings: self.max_position_embeddings,
            },
            "llama3" => {
                let need = |v: Option<f64>, k: &str| {
                    v.ok_or_else(|| invalid(format!("rope_scaling type 'llama3' needs {k}")))
                };
                let low = need(p.low_freq_factor, "low_freq_factor")?;
                let high = need(p.high_freq_factor, "high_freq_factor")?;
                if high.is_nan() || low.is_nan() || high <= low || low <= 0.0 {
                    return err(format!(
                        "llama3 rope_scaling needs high_freq_factor {high} > low_freq_factor \
                         {low} > 0"
                    ));
                }
                RopeScaling::Llama3 {
                    factor: factor("llama3")?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: p
                        .original_max_position_embeddings
                        .ok_or_else(|| {
                            invalid(
                                "rope_scaling type 'llama3' needs original_max_position_embeddings",
                            )
                        })?,
                }
            }
            other => {
                return err(format!(
                    "rope_scaling type '{other}' is not supported; supported: default, linear, \
                     dynamic, llama3"
                ))
            }
        };
        Ok((theta, scaling))
    }

    /// Checks the values make a buildable model.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let err = |m: String| Err(MfError::config(origin, m));
        if !matches!(self.model_type.as_str(), "llama" | "qwen2") {
            return err(format!(
                "model_type is '{}', not 'llama' or 'qwen2'",
                self.model_type
            ));
        }
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.num_hidden_layers == 0
            || self.num_attention_heads == 0
            || self.max_position_embeddings == 0
            || self.num_key_value_heads == Some(0)
            || self.head_dim == Some(0)
        {
            return err(
                "vocab_size, hidden_size, num_hidden_layers, num_attention_heads, \
                        num_key_value_heads, head_dim and max_position_embeddings must be positive"
                    .into(),
            );
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return err(format!(
                "num_attention_heads {} is not divisible by num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !self.head_size().is_multiple_of(2) {
            return err(format!(
                "head_dim {} must be even for RoPE",
                self.head_size()
            ));
        }
        if self.ffn_size() == 0 {
            return err("intermediate_size must be positive".into());
        }
        if self
            .extra
            .get("use_sliding_window")
            .and_then(|v| v.as_bool())
            == Some(true)
        {
            return err(
                "use_sliding_window=true (sliding-window attention) is not supported".into(),
            );
        }
        if let Some(tp) = self.extra.get("pretraining_tp").and_then(|v| v.as_u64()) {
            if tp != 1 {
                return err(format!("pretraining_tp {tp} is not supported; use 1"));
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
        let (theta, scaling) = self
            .rope()
            .map_err(|e| MfError::config(origin, e.to_string()))?;
        RotaryEmbedding::new(self.head_size(), theta, scaling)
            .map_err(|e| MfError::config(origin, e.to_string()))?;
        Ok(())
    }

    /// Parameter count of the model this config builds, computed without allocating it.
    pub fn num_parameters(&self) -> usize {
        let (h, v, l) = (self.hidden_size, self.vocab_size, self.num_hidden_layers);
        let (q, kv) = (
            self.num_attention_heads * self.head_size(),
            self.kv_heads() * self.head_size(),
        );
        let f = self.ffn_size();
        let attn = h * q
            + 2 * h * kv
            + q * h
            + if self.qkv_bias() { q + 2 * kv } else { 0 }
            + if self.o_bias() { h } else { 0 };
        let mlp = 3 * h * f + if self.mlp_bias { 2 * f + h } else { 0 };
        let embed = v * h * if self.tie_word_embeddings { 1 } else { 2 };
        embed + l * (attn + mlp + 2 * h) + h
    }

    /// The Hugging Face `config.json` content (HF key names).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::Map::new();
        for (k, val) in &self.extra {
            if !NOT_SAVED.contains(&k.as_str()) {
                v.insert(k.clone(), val.clone());
            }
        }
        let arch = if self.is_qwen2() {
            "Qwen2ForCausalLM"
        } else {
            "LlamaForCausalLM"
        };
        let eos = match self.eos_token_id.as_slice() {
            [one] => serde_json::json!(one),
            [] => serde_json::Value::Null,
            many => serde_json::json!(many),
        };
        // transformers 4.x reads rope_theta + rope_scaling; 5.x converts them itself.
        let (theta, rope_scaling) = match self.rope() {
            Ok((theta, s)) => (theta, rope_scaling_json(&s)),
            Err(_) => (self.rope_theta, serde_json::Value::Null),
        };
        let j = serde_json::json!({
            "model_type": self.model_type,
            "architectures": [arch],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.ffn_size(),
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.kv_heads(),
            "head_dim": self.head_size(),
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": theta,
            "rope_scaling": rope_scaling,
            "attention_dropout": self.attention_dropout,
            "hidden_act": self.hidden_act,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "use_cache": self.use_past,
        });
        if let serde_json::Value::Object(m) = j {
            v.extend(m);
        }
        if !self.is_qwen2() {
            v.insert("attention_bias".into(), self.attention_bias.into());
            v.insert("mlp_bias".into(), self.mlp_bias.into());
            if self.qkv_has_bias && !self.attention_bias {
                // HF LLaMA has no q/k/v-only bias switch; keep ours so we reload it.
                v.insert("qkv_has_bias".into(), true.into());
            }
        }
        serde_json::Value::Object(v)
    }
}

fn rope_scaling_json(s: &RopeScaling) -> serde_json::Value {
    match s {
        RopeScaling::None => serde_json::Value::Null,
        RopeScaling::Linear { factor } => {
            serde_json::json!({"rope_type": "linear", "type": "linear", "factor": factor})
        }
        RopeScaling::Dynamic { factor, .. } => {
            serde_json::json!({"rope_type": "dynamic", "type": "dynamic", "factor": factor})
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => serde_json::json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
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
    gate_proj: ColumnParallelLinear,
    up_proj: ColumnParallelLinear,
    down_proj: RowParallelLinear,
}

/// This rank's heads, the rotary embedding and the head width of `config` at `tp`.
fn attention_plan(
    config: &LlamaConfig,
    tp: TensorParallel,
) -> Result<(HeadShard, RotaryEmbedding, usize)> {
    let heads = HeadShard::plan(
        config.num_attention_heads,
        config.kv_heads(),
        tp.rank,
        tp.world_size,
    )?;
    let (theta, scaling) = config.rope()?;
    let hd = config.head_size();
    Ok((heads, RotaryEmbedding::new(hd, theta, scaling)?, hd))
}

impl Layer {
    /// Layer `l` (`model.layers.{i}`) at a tensor-parallel position, HF's initialisation.
    fn new(l: &Vars, config: &LlamaConfig, tp: TensorParallel, heads: &HeadShard) -> Result<Self> {
        let (h, std, f) = (
            config.hidden_size,
            config.initializer_range,
            config.ffn_size(),
        );
        let hd = config.head_size();
        let (q_out, kv_out) = (config.num_attention_heads * hd, heads.kv_heads * hd);
        let lay = WeightLayout::OutIn;
        let eps = config.rms_norm_eps;
        let (qkv_bias, o_bias, mlp_bias) = (config.qkv_bias(), config.o_bias(), config.mlp_bias);
        let (a, p) = (l / "self_attn", l / "mlp");
        let col = |name: &str, out: usize, bias: bool| {
            ColumnParallelLinear::new(&(&a / name), h, out, bias, lay, tp, std)
        };
        // k/v hold this rank's kv heads, which are replicated rather than split when there
        // are more ranks than kv heads.
        let kv = |name: &str| {
            ColumnParallelLinear::with_local_out(&(&a / name), h, kv_out, qkv_bias, lay, tp, std)
        };
        let mlp_col =
            |name: &str| ColumnParallelLinear::new(&(&p / name), h, f, mlp_bias, lay, tp, std);
        Ok(Layer {
            input_layernorm: RmsNorm::new(&(l / "input_layernorm"), h, eps)?,
            q_proj: col("q_proj", q_out, qkv_bias)?,
            k_proj: kv("k_proj")?,
            v_proj: kv("v_proj")?,
            o_proj: RowParallelLinear::new(&(&a / "o_proj"), q_out, h, o_bias, lay, tp, std)?,
            post_attention_layernorm: RmsNorm::new(&(l / "post_attention_layernorm"), h, eps)?,
            gate_proj: mlp_col("gate_proj")?,
            up_proj: mlp_col("up_proj")?,
            down_proj: RowParallelLinear::new(&(&p / "down_proj"), f, h, mlp_bias, lay, tp, std)?,
        })
    }
}

/// The LLaMA language model with its LM head (also Qwen2 checkpoints).
pub struct LlamaForCausalLM {
    config: LlamaConfig,
    params: Params,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// `None` when tied to `embed_tokens`.
    lm_head: Option<ColumnParallelLinear>,
    rope: RotaryEmbedding,
    heads: HeadShard,
    head_dim: i64,
    act: crate::layers::Activation,
}

impl std::fmt::Debug for LlamaForCausalLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaForCausalLM")
            .field("config", &self.config)
            .field("parameters", &self.num_parameters())
            .finish()
    }
}

impl LlamaForCausalLM {
    /// A randomly initialised model (HF's scheme: normal(0, initializer_range), norms 1,
    /// biases 0) on the CPU in f32; with `checkpoint_name_or_path` set, it is built from that
    /// checkpoint's weights instead.
    pub fn new(config: &LlamaConfig) -> Result<Self> {
        if config.checkpoint_name_or_path.is_empty() {
            return Self::with_parallel(config, TensorParallel::single());
        }
        let dir = crate::auto::resolve_model_dir(&config.checkpoint_name_or_path)?;
        let ckpt = SafeTensors::open(&dir)?;
        let single = TensorParallel::single();
        Self::build(config, single, Some(&ckpt), Device::Cpu, DType::F32)
    }

    /// A randomly initialised model at a tensor-parallel position.
    pub fn with_parallel(config: &LlamaConfig, tp: TensorParallel) -> Result<Self> {
        Self::build(config, tp, None, Device::Cpu, DType::F32)
    }

    /// The model with each parameter read from `ckpt` at `dtype` on `device`, or randomly
    /// initialised without one.
    fn build(
        config: &LlamaConfig,
        tp: TensorParallel,
        ckpt: Option<&SafeTensors>,
        device: Device,
        dtype: DType,
    ) -> Result<Self> {
        config.validate("LlamaConfig")?;
        let (heads, mut rope, hd) = attention_plan(config, tp)?;
        // Checkpoints saved from `LlamaModel` have no `model.` prefix.
        let candidates = |n: &str| prefixed_candidates(n, "model");
        let pb = ParamBuilder::causal(ckpt, &candidates).at(device, dtype)?;
        let root = Vars::root(&pb);
        let m = &root / "model";
        let (h, std) = (config.hidden_size, config.initializer_range);
        let embed_tokens = (&m / "embed_tokens").var(
            "weight",
            &[config.vocab_size as i64, h as i64],
            Init::Normal(std),
        )?;
        let lay = WeightLayout::OutIn;
        let eps = config.rms_norm_eps;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::new(&(&m / "layers" / i), config, tp, &heads))
            .collect::<Result<Vec<_>>>()?;
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
        Ok(LlamaForCausalLM {
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

    /// `LlamaForCausalLM.from_pretrained(name_or_dir)`: a preset name (weights from
    /// `$MF_HOME`, the HF cache, or the hub) or a Hugging Face LLaMA/Qwen2 directory.
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
        let mut config = LlamaConfig::from_json_file(crate::auto::config_file(dir)?)?;
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
    pub fn config(&self) -> &LlamaConfig {
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
        let [q, k, v] =
            ColumnParallelLinear::forward_many([&l.q_proj, &l.k_proj, &l.v_proj], &h, train);
        let q = apply_rotary(&split(q, nq), cos, sin);
        let k = apply_rotary(&split(k, nkv), cos, sin);
        let v = split(v, nkv);
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
        let [gate, up] = ColumnParallelLinear::forward_many([&l.gate_proj, &l.up_proj], &h, train);
        let m = self.act.forward(&gate) * up;
        Ok(x + l.down_proj.forward_t(&m, train))
    }
}

impl CausalLM for LlamaForCausalLM {
    /// The final hidden states, the LM head's input (the last position only under
    /// `last_only`).
    fn hidden_states(
        &self,
        input: &ForwardInput<'_>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let ids = input
            .input_ids
            .ok_or_else(|| invalid("LLaMA forward needs input_ids"))?;
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
        let (cos, sin) = self.rope.cos_sin(&pos, x.kind());
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

    /// RoPE has no learned position table, so length is not bounded by the model (as in
    /// transformers, quality past `max_position_embeddings` depends on the RoPE scaling).
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
            use_past: self.config.use_past,
            ..GenerationConfig::default()
        }
    }

    fn model_config(&self) -> Option<crate::ModelConfig> {
        Some(crate::ModelConfig::new(self.config.clone()))
    }
}

/// Checkpoint tensors that are not parameters: old RoPE buffers, a tied head's copy.
fn ignored(tied: bool, name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (tied && name == "lm_head.weight")
}

impl PreTrainedModel for LlamaForCausalLM {
    fn model_type(&self) -> &str {
        &self.config.model_type
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
    /// `lm_head.weight` and old `rotary_emb.inv_freq` buffers are skipped.
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
            v.push((format!("{p}.mlp.gate_proj"), &mut l.gate_proj));
            v.push((format!("{p}.mlp.up_proj"), &mut l.up_proj));
            v.push((format!("{p}.mlp.down_proj"), &mut l.down_proj));
        }
        v
    }
}

/// One pipeline stage of LLaMA at one tensor-parallel position, driven by mf-parallel:
/// q/k/v, gate and up column-parallel (whole query and kv heads per rank), o and down
/// row-parallel, embedding and LM head vocabulary-parallel or replicated.
pub struct LlamaStage {
    config: LlamaConfig,
    spec: crate::parallel::StageSpec,
    params: Params,
    embed_tokens: Option<Tensor>,
    layers: Vec<Layer>,
    norm: Option<RmsNorm>,
    lm_head: Option<Tensor>,
    rope: RotaryEmbedding,
    heads: HeadShard,
    head_dim: i64,
    act: crate::layers::Activation,
}

impl LlamaStage {
    /// Builds the stage `spec` describes with HF's random initialisation.
    pub fn new(config: &LlamaConfig, spec: crate::parallel::StageSpec) -> Result<Self> {
        config.validate("LlamaConfig")?;
        let tp = spec.tp;
        if !config.kv_heads().is_multiple_of(tp.world_size) {
            return Err(invalid(format!(
                "model_parallel = {} does not divide the {} key/value heads; replicating kv heads across ranks is not supported by the parallel runtime yet: pick a model_parallel that divides them",
                tp.world_size,
                config.kv_heads()
            )));
        }
        if spec.layers.end > config.num_hidden_layers || spec.layers.is_empty() {
            return Err(invalid(format!(
                "pipeline stage layers {:?} do not fit a model of {} layers",
                spec.layers, config.num_hidden_layers
            )));
        }
        let (heads, rope, hd) = attention_plan(config, tp)?;
        let pb = ParamBuilder::random();
        let root = Vars::root(&pb);
        let m = &root / "model";
        let h = config.hidden_size as i64;
        let normal = Init::Normal(config.initializer_range);
        let vocab = if spec.vocab_parallel {
            tp.shard(config.vocab_size, "vocabulary-parallel embedding")? as i64
        } else {
            config.vocab_size as i64
        };
        let tied = config.tie_word_embeddings;
        let embed_tokens = (spec.first || (tied && spec.last))
            .then(|| (&m / "embed_tokens").var("weight", &[vocab, h], normal))
            .transpose()?;
        let lm_head = (spec.last && !tied)
            .then(|| (&root / "lm_head").var("weight", &[vocab, h], normal))
            .transpose()?;
        let layers = spec
            .layers
            .clone()
            .map(|i| Layer::new(&(&m / "layers" / i), config, tp, &heads))
            .collect::<Result<Vec<_>>>()?;
        let norm = spec
            .last
            .then(|| RmsNorm::new(&(&m / "norm"), config.hidden_size, config.rms_norm_eps))
            .transpose()?;
        let params = pb.finish(&|_| false)?;
        Ok(LlamaStage {
            act: crate::layers::Activation::from_name(&config.hidden_act)?,
            head_dim: hd as i64,
            heads,
            rope,
            config: config.clone(),
            spec,
            params,
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    fn layer(&self, layer: usize) -> Result<&Layer> {
        Ok(&self.layers[crate::parallel::local_layer(&self.spec, layer)?])
    }
}

impl crate::parallel::ParallelLM for LlamaStage {
    fn spec(&self) -> &crate::parallel::StageSpec {
        &self.spec
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params.list()
    }

    fn shard_rule(&self, name: &str) -> crate::parallel::ShardRule {
        use crate::parallel::ShardRule::{Replicated, Split};
        // nn.Linear weights are [out, in]: column-parallel splits dim 0, row-parallel dim 1.
        let is = |suffix: &str| name.ends_with(suffix);
        if is("embed_tokens.weight") || name == "lm_head.weight" {
            return if self.spec.vocab_parallel {
                Split { dim: 0, parts: 1 }
            } else {
                Replicated
            };
        }
        let column = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"]
            .iter()
            .any(|p| name.contains(&format!(".{p}.")));
        let row = name.contains(".o_proj.") || name.contains(".down_proj.");
        if column {
            Split { dim: 0, parts: 1 }
        } else if row && is(".weight") {
            Split { dim: 1, parts: 1 }
        } else {
            Replicated
        }
    }

    fn tied_embedding(&self) -> Option<&str> {
        self.config
            .tie_word_embeddings
            .then_some("model.embed_tokens.weight")
    }

    fn has_dropout(&self) -> bool {
        self.config.attention_dropout > 0.0
    }

    fn hidden_dropout(&self) -> f64 {
        0.0
    }

    fn embedding_dropout(&self) -> f64 {
        0.0
    }

    fn token_embedding(&self, ids: &Tensor) -> Result<Tensor> {
        let w = self
            .embed_tokens
            .as_ref()
            .ok_or_else(|| invalid("this pipeline stage holds no embedding"))?;
        crate::parallel::vocab_embedding(w, ids, &self.spec)
    }

    fn embed_post(&self, x: &Tensor, _positions: &Tensor) -> Tensor {
        x.shallow_clone()
    }

    fn norm(&self, layer: usize, sub: crate::parallel::Sublayer, x: &Tensor) -> Result<Tensor> {
        let l = self.layer(layer)?;
        Ok(match sub {
            crate::parallel::Sublayer::Attention => l.input_layernorm.forward(x),
            crate::parallel::Sublayer::Mlp => l.post_attention_layernorm.forward(x),
        })
    }

    fn core(
        &self,
        layer: usize,
        sub: crate::parallel::Sublayer,
        h: &Tensor,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor> {
        // Training: `train` only switches LoRA dropout, and LoRA is not run in parallel.
        let train = true;
        let l = self.layer(layer)?;
        match sub {
            crate::parallel::Sublayer::Attention => {
                let (b, t, _) = h.size3()?;
                let hd = self.head_dim;
                let (nq, nkv) = (self.heads.q_heads as i64, self.heads.kv_heads as i64);
                let pos = Tensor::arange(t, (Kind::Int64, h.device()))
                    .unsqueeze(0)
                    .expand([b, t], false);
                let (cos, sin) = self.rope.cos_sin(&pos, h.kind());
                let split = |y: Tensor, n: i64| y.view([b, t, n, hd]).transpose(1, 2);
                let q = apply_rotary(&split(l.q_proj.forward_t(h, train), nq), &cos, &sin);
                let k = apply_rotary(&split(l.k_proj.forward_t(h, train), nkv), &cos, &sin);
                let v = split(l.v_proj.forward_t(h, train), nkv);
                let attn = crate::layers::causal_attention_seeded(
                    &q,
                    &k,
                    &v,
                    self.config.attention_dropout,
                    dropout_seed,
                )
                .transpose(1, 2)
                .reshape([b, t, nq * hd]);
                Ok(l.o_proj.forward_partial(&attn))
            }
            crate::parallel::Sublayer::Mlp => {
                let m = self.act.forward(&l.gate_proj.forward_t(h, train))
                    * l.up_proj.forward_t(h, train);
                Ok(l.down_proj.forward_partial(&m))
            }
        }
    }

    fn out_bias(&self, layer: usize, sub: crate::parallel::Sublayer) -> Option<Tensor> {
        let l = self.layer(layer).ok()?;
        match sub {
            crate::parallel::Sublayer::Attention => l.o_proj.bias().map(|t| t.shallow_clone()),
            crate::parallel::Sublayer::Mlp => l.down_proj.bias().map(|t| t.shallow_clone()),
        }
    }

    fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        let n = self
            .norm
            .as_ref()
            .ok_or_else(|| invalid("this pipeline stage holds no final norm"))?;
        Ok(n.forward(x))
    }

    fn head_weight(&self) -> Result<Tensor> {
        self.lm_head
            .as_ref()
            .or(self.embed_tokens.as_ref())
            .map(|t| t.shallow_clone())
            .ok_or_else(|| invalid("this pipeline stage holds no LM head"))
    }

    fn layer_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix("model.layers.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }
}

impl crate::auto::FamilyConfig for LlamaConfig {
    fn family_name() -> &'static str {
        "llama"
    }

    fn model_type(&self) -> &'static str {
        if self.is_qwen2() {
            "qwen2"
        } else {
            "llama"
        }
    }

    fn config_json(&self) -> serde_json::Value {
        self.to_hf_json()
    }
}

impl crate::ModelConfig {
    /// The LLaMA config, or an error naming the actual family.
    pub fn into_llama(self) -> Result<LlamaConfig> {
        self.into_config()
    }
}

/// The registry entry of this family (see [`crate::auto::FAMILIES`]).
pub const FAMILY: crate::auto::Family = crate::auto::Family {
    name: "llama",
    title: "LLaMA",
    model_types: &["llama", "qwen2"],
    presets: crate::presets::LLAMA,
    parse_preset: |p, origin| {
        let mut c = crate::auto::preset_config(&p.config, origin, |c: &LlamaConfig| &c.extra)?;
        c.model_type = p.model_type.clone();
        c.hub_repo = p.hub_repo.clone();
        c.validate(origin)?;
        Ok(crate::ModelConfig::new(c))
    },
    parse_json: |v, origin| {
        let c: LlamaConfig = crate::auto::json_config(v, origin)?;
        c.validate(origin)?;
        Ok(crate::ModelConfig::new(c))
    },
    read_json: |path| Ok(crate::ModelConfig::new(LlamaConfig::from_json_file(path)?)),
    causal_from_config: Some(|config| {
        Ok(Box::new(LlamaForCausalLM::new(
            config.downcast::<LlamaConfig>()?,
        )?))
    }),
    tasks: &[crate::task::Task::CausalLM],
    load_causal: Some(|dir, device, dtype| {
        Ok(Box::new(LlamaForCausalLM::from_dir_on(dir, device, dtype)?))
    }),
    load_task: None,
    from_config: None,
    parallel: Some(crate::parallel::ParallelFamily {
        dims: |config| {
            let c = config.downcast::<LlamaConfig>()?;
            Ok(crate::parallel::ParallelDims {
                heads: c.num_attention_heads,
                kv_heads: Some(c.kv_heads()),
                vocab: c.vocab_size,
                layers: c.num_hidden_layers,
            })
        },
        build_stage: |config, spec| {
            Ok(Box::new(LlamaStage::new(
                config.downcast::<LlamaConfig>()?,
                spec,
            )?))
        },
    }),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mindformers_defaults_give_llama_7b_shapes() {
        let c = LlamaConfig::default();
        assert_eq!(c.ffn_size(), 11008);
        assert_eq!(c.num_parameters(), 6_738_415_616);
        let c = LlamaConfig::default()
            .with_seq_length(2048)
            .with_num_layers(2);
        assert_eq!((c.max_position_embeddings, c.num_hidden_layers), (2048, 2));
    }

    #[test]
    fn mindformers_names_parse() {
        let c: LlamaConfig = serde_json::from_str(
            r#"{"seq_length": 128, "num_layers": 2, "num_heads": 4, "n_kv_heads": 2,
                "hidden_size": 64, "theta": 500000.0, "batch_size": 2, "use_past": false,
                "eos_token_id": [2, 7], "pad_token_id": -1}"#,
        )
        .unwrap();
        assert_eq!(c.max_position_embeddings, 128);
        assert_eq!(
            (c.num_hidden_layers, c.num_attention_heads, c.kv_heads()),
            (2, 4, 2)
        );
        assert_eq!(
            (c.rope_theta, c.batch_size, c.use_past),
            (500000.0, 2, false)
        );
        assert_eq!((c.eos_token_id.clone(), c.pad_token_id), (vec![2, 7], None));
        c.validate("test").unwrap();
    }
}
