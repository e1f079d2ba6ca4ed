//! BLOOM (`BloomForCausalLM`): ALiBi attention biases instead of position embeddings, a
//! LayerNorm right after the token embedding, pre-LayerNorm blocks with a fused
//! `query_key_value` projection (per head `[q, k, v]`), a tanh-GELU MLP and an LM head tied to
//! the token embedding. Parameter names and layouts are Hugging Face's, so HF checkpoints load
//! and ours load in transformers.
//!
//! Tensor parallelism: `query_key_value` and `dense_h_to_4h` are column-parallel, `dense` and
//! `dense_4h_to_h` row-parallel. Because the fused projection is laid out head by head, an even
//! row slice of it is a whole number of heads, so a rank's slice of the HF tensor is
//! contiguous; each rank takes the ALiBi slopes of its own heads.
use std::collections::BTreeMap;
use std::path::Path;

use mf_core::checkpoint::SafeTensors;
use mf_core::{invalid, DType, Device, MfError, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::generation::GenerationConfig;
use crate::layers::params::{prefixed_candidates, Init, ParamBuilder, Params, Vars};
use crate::layers::{
    alibi_slopes, attention_mask, linear, sdpa, AttnMask, ColumnParallelLinear, HeadShard, KvCache,
    LayerNorm, RowParallelLinear, TensorParallel, WeightLayout,
};
use crate::llama::{ids, opt_id};
use crate::model::{CausalLM, ForwardInput};
use crate::task::{PreTrainedModel, Task};

/// BLOOM hyperparameters under Hugging Face `config.json` keys (`n_embed`, `n_layer`,
/// `n_head`, ...), also accepting MindFormers' names (`num_layers`, `num_heads`,
/// `seq_length`, `use_past`, `checkpoint_name_or_path`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BloomConfig {
    /// Always `bloom`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    #[serde(alias = "n_embed")]
    pub hidden_size: usize,
    /// Number of blocks.
    #[serde(alias = "num_hidden_layers", alias = "num_layers")]
    pub n_layer: usize,
    /// Attention heads per block.
    #[serde(alias = "num_attention_heads", alias = "num_heads")]
    pub n_head: usize,
    /// LayerNorm epsilon.
    #[serde(alias = "layernorm_epsilon")]
    pub layer_norm_epsilon: f64,
    /// Residual taken after the LayerNorm instead of before it (BLOOM's Megatron option).
    pub apply_residual_connection_post_layernorm: bool,
    /// Dropout on the attention and MLP outputs (training only).
    pub hidden_dropout: f64,
    /// Dropout on attention probabilities (training only).
    pub attention_dropout: f64,
    /// Megatron's training tensor-parallel degree; only affects transformers'
    /// `slow_but_exact` summation order, kept for config round-trips.
    pub pretraining_tp: usize,
    /// transformers' sliced output projection (the same sum in another order); kept for
    /// config round-trips.
    pub slow_but_exact: bool,
    /// LM head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// Training context length (MindFormers' `seq_length`). ALiBi has no position table, so
    /// this does not bound generation; it is kept for config round-trips.
    #[serde(alias = "seq_length")]
    pub max_position_embeddings: Option<usize>,
    /// Std of the normal init.
    pub initializer_range: f64,
    /// Beginning-of-sequence id.
    #[serde(deserialize_with = "opt_id")]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s).
    #[serde(deserialize_with = "ids")]
    pub eos_token_id: Vec<u32>,
    /// Padding id.
    #[serde(deserialize_with = "opt_id")]
    pub pad_token_id: Option<u32>,
    /// Use the KV cache when generating.
    #[serde(alias = "use_past")]
    pub use_cache: bool,
    /// A preset name or directory whose weights `BloomForCausalLM::new` loads, as in
    /// MindFormers; empty means random initialisation.
    pub checkpoint_name_or_path: String,
    /// Hugging Face hub repository of the preset's weights.
    pub hub_repo: Option<String>,
    /// Other `config.json` keys, kept so a saved config round-trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for BloomConfig {
    /// transformers' `BloomConfig()` defaults (a 2-layer, 64-wide model over BLOOM's vocabulary).
    fn default() -> Self {
        BloomConfig {
            model_type: "bloom".into(),
            vocab_size: 250880,
            hidden_size: 64,
            n_layer: 2,
            n_head: 8,
            layer_norm_epsilon: 1e-5,
            apply_residual_connection_post_layernorm: false,
            hidden_dropout: 0.0,
            attention_dropout: 0.0,
            pretraining_tp: 1,
            slow_but_exact: false,
            tie_word_embeddings: true,
            max_position_embeddings: None,
            initializer_range: 0.02,
            bos_token_id: Some(1),
            eos_token_id: vec![2],
            pad_token_id: Some(3),
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
    "n_embed",
    "num_hidden_layers",
    "num_attention_heads",
];

impl BloomConfig {
    /// `BloomConfig.from_pretrained(name_or_dir)`: a preset name or a directory's `config.json`.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Self> {
        crate::auto::AutoConfig::from_pretrained(name_or_dir)?.into_bloom()
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: BloomConfig = mf_core::config::read_json(path)?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// Head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.n_head.max(1)
    }

    /// Checks the values make a buildable model.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let err = |m: String| Err(MfError::config(origin, m));
        if self.model_type != "bloom" {
            return err(format!("model_type is '{}', not 'bloom'", self.model_type));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.n_layer == 0 || self.n_head == 0 {
            return err("vocab_size, hidden_size, n_layer and n_head must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.n_head) {
            return err(format!(
                "hidden_size {} is not divisible by n_head {}",
                self.hidden_size, self.n_head
            ));
        }
        for (name, p) in [
            ("hidden_dropout", self.hidden_dropout),
            ("attention_dropout", self.attention_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return err(format!("{name} = {p} is not in [0, 1)"));
            }
        }
        Ok(())
    }

    /// Parameter count of the model this config builds, computed without allocating it.
    pub fn num_parameters(&self) -> usize {
        let (h, v, l) = (self.hidden_size, self.vocab_size, self.n_layer);
        let attn = h * 3 * h + 3 * h + h * h + h;
        let mlp = h * 4 * h + 4 * h + 4 * h * h + h;
        let embed = v * h * if self.tie_word_embeddings { 1 } else { 2 };
        embed + 2 * h + l * (attn + mlp + 4 * h) + 2 * h
    }

    /// The Hugging Face `config.json` content (HF key names).
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
            "model_type": "bloom",
            "architectures": ["BloomForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "apply_residual_connection_post_layernorm":
                self.apply_residual_connection_post_layernorm,
            "hidden_dropout": self.hidden_dropout,
            "attention_dropout": self.attention_dropout,
            "pretraining_tp": self.pretraining_tp,
            "slow_but_exact": self.slow_but_exact,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "use_cache": self.use_cache,
        });
        if let serde_json::Value::Object(m) = j {
            v.extend(m);
        }
        if let Some(n) = self.max_position_embeddings {
            v.insert("seq_length".into(), n.into());
        }
        serde_json::Value::Object(v)
    }
}

/// transformers' `bloom_gelu_forward`: the tanh GELU with BLOOM's rounded constant
/// (0.79788456), written out so logits match to the last bits.
fn bloom_gelu(x: &Tensor) -> Tensor {
    let inner = (x * 0.79788456) * (x * x * 0.044715 + 1.0);
    x * 0.5 * (inner.tanh() + 1.0)
}

#[derive(Debug)]
struct Block {
    input_layernorm: LayerNorm,
    query_key_value: ColumnParallelLinear,
    dense: RowParallelLinear,
    post_attention_layernorm: LayerNorm,
    dense_h_to_4h: ColumnParallelLinear,
    dense_4h_to_h: RowParallelLinear,
}

/// The BLOOM language model with its LM head.
pub struct BloomForCausalLM {
    config: BloomConfig,
    params: Params,
    word_embeddings: Tensor,
    word_embeddings_layernorm: LayerNorm,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// `None` when tied to `word_embeddings`.
    lm_head: Option<ColumnParallelLinear>,
    /// ALiBi slopes of this rank's heads, f32 `[heads]`.
    slopes: Tensor,
    heads: usize,
    head_dim: i64,
}

impl std::fmt::Debug for BloomForCausalLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BloomForCausalLM")
            .field("config", &self.config)
            .field("parameters", &self.num_parameters())
            .finish()
    }
}

impl BloomForCausalLM {
    /// A randomly initialised model (normal(0, initializer_range), norms 1, biases 0) on the
    /// CPU in f32; with `checkpoint_name_or_path` set, it is built from that checkpoint's
    /// weights instead.
    pub fn new(config: &BloomConfig) -> Result<Self> {
        if config.checkpoint_name_or_path.is_empty() {
            return Self::with_parallel(config, TensorParallel::single());
        }
        let dir = crate::auto::resolve_model_dir(&config.checkpoint_name_or_path)?;
        let ckpt = SafeTensors::open(&dir)?;
        let single = TensorParallel::single();
        Self::build(config, single, Some(&ckpt), Device::Cpu, DType::F32)
    }

    /// A randomly initialised model at a tensor-parallel position.
    pub fn with_parallel(config: &BloomConfig, tp: TensorParallel) -> Result<Self> {
        Self::build(config, tp, None, Device::Cpu, DType::F32)
    }

    /// The model with each parameter read from `ckpt` at `dtype` on `device`, or randomly
    /// initialised without one.
    fn build(
        config: &BloomConfig,
        tp: TensorParallel,
        ckpt: Option<&SafeTensors>,
        device: Device,
        dtype: DType,
    ) -> Result<Self> {
        config.validate("BloomConfig")?;
        let heads = HeadShard::plan(config.n_head, config.n_head, tp.rank, tp.world_size)?;
        // BigScience's own checkpoints were saved from `BloomModel`: no `transformer.` prefix.
        let candidates = |n: &str| prefixed_candidates(n, "transformer");
        let pb = ParamBuilder::causal(ckpt, &candidates).at(device, dtype)?;
        let root = Vars::root(&pb);
        let m = &root / "transformer";
        let (h, std, eps) = (
            config.hidden_size,
            config.initializer_range,
            config.layer_norm_epsilon,
        );
        let lay = WeightLayout::OutIn;
        let word_embeddings = (&m / "word_embeddings").var(
            "weight",
            &[config.vocab_size as i64, h as i64],
            Init::Normal(std),
        )?;
        let word_embeddings_layernorm =
            LayerNorm::new(&(&m / "word_embeddings_layernorm"), h, eps)?;
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let b = &m / "h" / i;
            let (a, p) = (&b / "self_attention", &b / "mlp");
            blocks.push(Block {
                input_layernorm: LayerNorm::new(&(&b / "input_layernorm"), h, eps)?,
                query_key_value: ColumnParallelLinear::new(
                    &(&a / "query_key_value"),
                    h,
                    3 * h,
                    true,
                    lay,
                    tp,
                    std,
                )?,
                dense: RowParallelLinear::new(&(&a / "dense"), h, h, true, lay, tp, std)?,
                post_attention_layernorm: LayerNorm::new(
                    &(&b / "post_attention_layernorm"),
                    h,
                    eps,
                )?,
                dense_h_to_4h: ColumnParallelLinear::new(
                    &(&p / "dense_h_to_4h"),
                    h,
                    4 * h,
                    true,
                    lay,
                    tp,
                    std,
                )?,
                dense_4h_to_h: RowParallelLinear::new(
                    &(&p / "dense_4h_to_h"),
                    4 * h,
                    h,
                    true,
                    lay,
                    tp,
                    std,
                )?,
            });
        }
        let ln_f = LayerNorm::new(&(&m / "ln_f"), h, eps)?;
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
        let first = (tp.rank * heads.q_heads) as i64;
        let slopes =
            alibi_slopes(config.n_head, pb.device()).narrow(0, first, heads.q_heads as i64);
        let tied = config.tie_word_embeddings;
        let params = pb.finish(&|n| tied && n == "lm_head.weight")?;
        Ok(BloomForCausalLM {
            config: config.clone(),
            params,
            word_embeddings,
            word_embeddings_layernorm,
            blocks,
            ln_f,
            lm_head,
            slopes,
            heads: heads.q_heads,
            head_dim: config.head_dim() as i64,
        })
    }

    /// `BloomForCausalLM.from_pretrained(name_or_dir)`: a preset name (weights from
    /// `$MF_HOME`, the HF cache, or the hub) or a Hugging Face BLOOM directory.
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
        let mut config = BloomConfig::from_json_file(crate::auto::config_file(dir)?)?;
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
    pub fn config(&self) -> &BloomConfig {
        &self.config
    }

    /// A variable store over the model's parameters (for tch optimizers).
    pub fn var_store(&self) -> &nn::VarStore {
        self.params.var_store()
    }

    /// ALiBi biases `[batch or 1, heads, 1, keys]` in `kind`: each head's slope times the key's
    /// position. Positions count real tokens only (`cumsum(mask) - 1`, 0 on padding), as in
    /// transformers' `build_alibi_tensor`, so a left-padded row gets the biases it would get
    /// alone. The per-query offset transformers leaves out cancels in the softmax.
    fn alibi(&self, mask: Option<&Tensor>, keys: i64, kind: Kind) -> Tensor {
        let dev = self.slopes.device();
        let pos = match mask {
            Some(m) => {
                let m = m.to_device(dev).to_kind(Kind::Int64);
                (m.cumsum(-1, Kind::Int64) - 1) * m
            }
            None => Tensor::arange(keys, (Kind::Int64, dev)).unsqueeze(0),
        };
        let alibi = self.slopes.view([1, -1, 1, 1]) * pos.unsqueeze(1).unsqueeze(1);
        alibi.to_kind(kind)
    }

    fn block_forward(
        &self,
        i: usize,
        blk: &Block,
        x: &Tensor,
        bias: &AttnMask,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.size3()?;
        let (nh, hd) = (self.heads as i64, self.head_dim);
        let ln = blk.input_layernorm.forward(x);
        let residual = if self.config.apply_residual_connection_post_layernorm {
            &ln
        } else {
            x
        };
        // BLOOM's fused layout: per head, q then k then v.
        let qkv = blk
            .query_key_value
            .forward_t(&ln, train)
            .view([b, t, nh, 3, hd]);
        let part = |j: i64| qkv.select(3, j).transpose(1, 2);
        let (q, k, v) = (part(0), part(1), part(2));
        let (k, v) = match cache {
            Some(c) => c.append(i, &k, &v)?,
            None => (k, v),
        };
        let p_attn = if train {
            self.config.attention_dropout
        } else {
            0.0
        };
        let attn = sdpa(&q, &k, &v, bias, p_attn)
            .transpose(1, 2)
            .reshape([b, t, nh * hd]);
        let p = self.config.hidden_dropout;
        let x = residual + blk.dense.forward_t(&attn, train).dropout(p, train);
        let ln = blk.post_attention_layernorm.forward(&x);
        let residual = if self.config.apply_residual_connection_post_layernorm {
            &ln
        } else {
            &x
        };
        let m = blk
            .dense_4h_to_h
            .forward_t(&bloom_gelu(&blk.dense_h_to_4h.forward_t(&ln, train)), train);
        Ok(residual + m.dropout(p, train))
    }
}

impl CausalLM for BloomForCausalLM {
    /// The final hidden states, the LM head's input (the last position only under
    /// `last_only`).
    fn hidden_states(
        &self,
        input: &ForwardInput<'_>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let ids = input
            .input_ids
            .ok_or_else(|| invalid("BLOOM forward needs input_ids"))?;
        let dev = self.word_embeddings.device();
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
        if let Some(p) = input.position_ids {
            if p.size() != [b, t] {
                return Err(MfError::Shape(format!(
                    "position_ids is {:?}, expected [{b}, {t}]",
                    p.size()
                )));
            }
        }
        let max_id = self.config.vocab_size as i64;
        if t > 0 && (ids.max().int64_value(&[]) >= max_id || ids.min().int64_value(&[]) < 0) {
            return Err(invalid(format!(
                "input_ids contain a token id outside [0, {max_id})"
            )));
        }
        let x = Tensor::embedding(&self.word_embeddings, &ids, -1, false, false);
        let mut x = self.word_embeddings_layernorm.forward(&x);
        let allowed = attention_mask(input.attention_mask, past, t, dev).to_bool(past, t, dev);
        let alibi = self.alibi(input.attention_mask, past + t, x.kind());
        let bias = AttnMask::Additive(alibi.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY));
        for (i, blk) in self.blocks.iter().enumerate() {
            x = self.block_forward(i, blk, &x, &bias, cache.as_deref_mut(), input.train)?;
        }
        if let Some(c) = cache {
            c.advance(t as usize);
        }
        let x = if input.last_only {
            x.narrow(1, t - 1, 1)
        } else {
            x
        };
        let x = self.ln_f.forward(&x);
        Ok(x)
    }

    /// The head as a plain `[vocab, hidden]` matrix, when it is one.
    fn head_matrix(&self) -> Option<Tensor> {
        match &self.lm_head {
            Some(head) => head.as_matrix(),
            None => Some(self.word_embeddings.shallow_clone()),
        }
    }

    /// `position_ids` are checked but not used: ALiBi positions come from the attention mask
    /// (as in transformers, where BLOOM takes no position ids).
    fn forward(&self, input: &ForwardInput<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = self.hidden_states(input, cache)?;
        Ok(match &self.lm_head {
            Some(head) => head.forward(&x),
            None => linear(&x, &self.word_embeddings, None, WeightLayout::OutIn),
        })
    }

    fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(self.config.n_layer, capacity)
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// ALiBi has no position table, so length is not bounded by the model.
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

impl PreTrainedModel for BloomForCausalLM {
    fn model_type(&self) -> &str {
        "bloom"
    }

    fn task(&self) -> Task {
        Task::CausalLM
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.to_hf_json()
    }

    fn device(&self) -> tch::Device {
        self.word_embeddings.device()
    }

    fn to(&mut self, device: Device, dtype: DType) -> Result<()> {
        self.params.to(device, dtype)?;
        // The slopes are not parameters and stay f32, as in transformers.
        self.slopes = self.slopes.f_to_device(device.to_tch()?)?;
        Ok(())
    }

    fn num_parameters(&self) -> usize {
        self.params.numel()
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params.list()
    }

    /// Accepts HF names with or without the `transformer.` prefix (BigScience's own
    /// checkpoints were saved from `BloomModel` and have none); a tied checkpoint's
    /// `lm_head.weight` is skipped.
    fn load_weights(&self, ckpt: &SafeTensors) -> Result<()> {
        let rename = |name: &str| -> Option<String> {
            if name.starts_with("transformer.") || name.starts_with("lm_head.") {
                Some(name.to_string())
            } else {
                Some(format!("transformer.{name}"))
            }
        };
        let tied = self.lm_head.is_none();
        self.params
            .load(ckpt, &rename, &|n| tied && n == "lm_head.weight")
    }

    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        self.params.save_pretrained(dir, self.config.to_hf_json())
    }

    fn lora_layers(&mut self) -> Vec<(String, &mut dyn crate::lora::LoraHost)> {
        let mut v: Vec<(String, &mut dyn crate::lora::LoraHost)> = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("transformer.h.{i}");
            v.push((
                format!("{p}.self_attention.query_key_value"),
                &mut b.query_key_value,
            ));
            v.push((format!("{p}.self_attention.dense"), &mut b.dense));
            v.push((format!("{p}.mlp.dense_h_to_4h"), &mut b.dense_h_to_4h));
            v.push((format!("{p}.mlp.dense_4h_to_h"), &mut b.dense_4h_to_h));
        }
        v
    }
}

impl crate::auto::FamilyConfig for BloomConfig {
    fn family_name() -> &'static str {
        "bloom"
    }

    fn model_type(&self) -> &'static str {
        "bloom"
    }

    fn config_json(&self) -> serde_json::Value {
        self.to_hf_json()
    }
}

impl crate::ModelConfig {
    /// The BLOOM config, or an error naming the actual family.
    pub fn into_bloom(self) -> Result<BloomConfig> {
        self.into_config()
    }
}

/// The registry entry of this family (see [`crate::auto::FAMILIES`]).
pub const FAMILY: crate::auto::Family = crate::auto::Family {
    name: "bloom",
    title: "BLOOM",
    model_types: &["bloom"],
    presets: crate::presets::BLOOM,
    parse_preset: |p, origin| {
        let mut c = crate::auto::preset_config(&p.config, origin, |c: &BloomConfig| &c.extra)?;
        c.hub_repo = p.hub_repo.clone();
        c.validate(origin)?;
        Ok(crate::ModelConfig::new(c))
    },
    parse_json: |v, origin| {
        let c: BloomConfig = crate::auto::json_config(v, origin)?;
        c.validate(origin)?;
        Ok(crate::ModelConfig::new(c))
    },
    read_json: |path| Ok(crate::ModelConfig::new(BloomConfig::from_json_file(path)?)),
    causal_from_config: Some(|config| {
        Ok(Box::new(BloomForCausalLM::new(
            config.downcast::<BloomConfig>()?,
        )?))
    }),
    tasks: &[crate::task::Task::CausalLM],
    load_causal: Some(|dir, device, dtype| {
        Ok(Box::new(BloomForCausalLM::from_dir_on(dir, device, dtype)?))
    }),
    load_task: None,
    from_config: None,
    parallel: None,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_and_mindformers_names_parse() {
        let c: BloomConfig = serde_json::from_str(
            r#"{"n_embed": 64, "num_layers": 3, "num_heads": 4, "seq_length": 128,
                "use_past": false, "pad_token_id": null}"#,
        )
        .unwrap();
        assert_eq!((c.hidden_size, c.n_layer, c.n_head), (64, 3, 4));
        assert_eq!((c.max_position_embeddings, c.use_cache), (Some(128), false));
        assert_eq!(c.pad_token_id, None);
        c.validate("test").unwrap();
    }

    #[test]
    fn bloom_gelu_is_the_tanh_gelu() {
        let x = Tensor::from_slice(&[-3.0f32, -0.5, 0.0, 0.7, 2.5]);
        let d = (bloom_gelu(&x) - x.gelu("tanh"))
            .abs()
            .max()
            .double_value(&[]);
        assert!(d < 1e-6, "{d}");
    }
}
