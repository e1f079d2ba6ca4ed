//! PanGu-α (MindFormers' `PanguAlphaHeadModel`): learned token and position embeddings,
//! `num_layers - 1` GPT-style pre-LayerNorm layers, a LayerNorm, then the *top query layer*,
//! whose attention query comes from a separate learned position embedding
//! (`top_query_embedding`) while keys and values come from the hidden state; logits use the
//! token embedding as the head. Written from the PanGu-α paper (Zeng et al. 2021, §3.1) and
//! MindFormers' model card; no Hugging Face class exists, so the parity reference is the plain
//! PyTorch implementation in `tools/reference/pangualpha_reference.py`.
//!
//! Parameter names follow MindFormers' module hierarchy (`backbone.blocks.N.attention.dense1`,
//! `backbone.top_query_layer...`, `embedding_table`) with PyTorch's `weight`/`bias` and
//! `[out, in]` linear layout, as the reference's `state_dict` has them.
//!
//! Tensor parallelism: `dense1`/`dense2`/`dense3` (q/k/v) and `mapping` are column-parallel,
//! the two `projection`s row-parallel, so a rank holds whole heads.
use std::collections::BTreeMap;
use std::path::Path;

use mf_core::checkpoint::SafeTensors;
use mf_core::{invalid, DType, Device, MfError, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::generation::GenerationConfig;
use crate::layers::params::{Init, ParamBuilder, Params, Vars};
use crate::layers::{
    attention_mask, linear, sdpa, AttnMask, ColumnParallelLinear, HeadShard, KvCache, LayerNorm,
    RowParallelLinear, TensorParallel, WeightLayout,
};
use crate::llama::{ids, opt_id};
use crate::model::{CausalLM, ForwardInput};
use crate::task::{PreTrainedModel, Task};

/// PanGu-α hyperparameters under MindFormers' names.
///
/// MindFormers' `PanguAlphaConfig(hidden_size=768, ffn_hidden_size=768*4, num_layers=12,
/// num_heads=12, checkpoint_name_or_path='')` is
/// `PanguAlphaConfig { hidden_size: 768, ffn_hidden_size: 768 * 4, num_layers: 12,
/// num_heads: 12, ..Default::default() }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PanguAlphaConfig {
    /// Always `pangualpha`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    #[serde(alias = "intermediate_size")]
    pub ffn_hidden_size: usize,
    /// Layers, the top query layer included.
    #[serde(alias = "num_hidden_layers")]
    pub num_layers: usize,
    /// Attention heads per layer.
    #[serde(alias = "num_attention_heads")]
    pub num_heads: usize,
    /// Number of learned positions (also the top query embedding's size).
    #[serde(alias = "max_position_embeddings")]
    pub seq_length: usize,
    /// MLP activation: `fast_gelu` (MindSpore's x·sigmoid(1.702x)), `gelu`, `relu`.
    pub hidden_act: String,
    /// LayerNorm epsilon.
    pub layernorm_epsilon: f64,
    /// Dropout on the embeddings (training only).
    pub embedding_dropout_prob: f64,
    /// Dropout on the attention and MLP outputs (training only).
    pub hidden_dropout_rate: f64,
    /// Dropout on attention probabilities (training only).
    pub attention_dropout_rate: f64,
    /// Residual taken after the LayerNorm instead of before it.
    pub post_layernorm_residual: bool,
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
    #[serde(alias = "use_cache")]
    pub use_past: bool,
    /// MindFormers' batch size (used by its static graphs; kept for config round-trips).
    pub batch_size: usize,
    /// A preset name or directory whose weights `PanguAlphaHeadModel::new` loads, as in
    /// MindFormers; empty means random initialisation.
    pub checkpoint_name_or_path: String,
    /// Hugging Face hub repository of the preset's weights (none are published).
    pub hub_repo: Option<String>,
    /// Other `config.json` keys, kept so a saved config round-trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for PanguAlphaConfig {
    /// MindFormers' `PanguAlphaConfig()` defaults: PanGu-α 2.6B shapes, 1024 positions.
    fn default() -> Self {
        PanguAlphaConfig {
            model_type: "pangualpha".into(),
            vocab_size: 40000,
            hidden_size: 2560,
            ffn_hidden_size: 2560 * 4,
            num_layers: 32,
            num_heads: 32,
            seq_length: 1024,
            hidden_act: "fast_gelu".into(),
            layernorm_epsilon: 1e-5,
            embedding_dropout_prob: 0.1,
            hidden_dropout_rate: 0.1,
            attention_dropout_rate: 0.1,
            post_layernorm_residual: false,
            initializer_range: 0.02,
            bos_token_id: None,
            eos_token_id: vec![8],
            pad_token_id: Some(6),
            use_past: false,
            batch_size: 1,
            checkpoint_name_or_path: String::new(),
            hub_repo: None,
            extra: BTreeMap::new(),
        }
    }
}

/// Keys of a saved config that are recomputed on save.
const NOT_SAVED: &[&str] = &[
    "architectures",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "tie_word_embeddings",
];

impl PanguAlphaConfig {
    /// `PanguAlphaConfig.from_pretrained(name_or_dir)`: a preset name or a directory's
    /// `config.json`.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Self> {
        crate::auto::AutoConfig::from_pretrained(name_or_dir)?.into_pangualpha()
    }

    /// Reads a `config.json` (MindFormers key names).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: PanguAlphaConfig = mf_core::config::read_json(path)?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// Checks the values make a buildable model.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let err = |m: String| Err(MfError::config(origin, m));
        if self.model_type != "pangualpha" {
            return err(format!(
                "model_type is '{}', not 'pangualpha'",
                self.model_type
            ));
        }
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.ffn_hidden_size == 0
            || self.num_heads == 0
            || self.seq_length == 0
        {
            return err(
                "vocab_size, hidden_size, ffn_hidden_size, num_heads and seq_length must be \
                 positive"
                    .into(),
            );
        }
        if self.num_layers < 1 {
            return err("num_layers must be at least 1 (the top query layer)".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return err(format!(
                "hidden_size {} is not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        for (name, p) in [
            ("embedding_dropout_prob", self.embedding_dropout_prob),
            ("hidden_dropout_rate", self.hidden_dropout_rate),
            ("attention_dropout_rate", self.attention_dropout_rate),
        ] {
            if !(0.0..1.0).contains(&p) {
                return err(format!("{name} = {p} is not in [0, 1)"));
            }
        }
        crate::layers::Activation::from_name(&self.hidden_act)
            .map_err(|e| MfError::config(origin, e.to_string()))?;
        Ok(())
    }

    /// Parameter count of the model this config builds, computed without allocating it.
    pub fn num_parameters(&self) -> usize {
        let (h, f) = (self.hidden_size, self.ffn_hidden_size);
        let layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h;
        (self.vocab_size + 2 * self.seq_length) * h + self.num_layers * layer + 2 * h
    }

    /// The `config.json` content (MindFormers' key names, which the reference reads).
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
            "model_type": "pangualpha",
            "architectures": ["PanguAlphaHeadModel"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "ffn_hidden_size": self.ffn_hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "seq_length": self.seq_length,
            "hidden_act": self.hidden_act,
            "layernorm_epsilon": self.layernorm_epsilon,
            "embedding_dropout_prob": self.embedding_dropout_prob,
            "hidden_dropout_rate": self.hidden_dropout_rate,
            "attention_dropout_rate": self.attention_dropout_rate,
            "post_layernorm_residual": self.post_layernorm_residual,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": true,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "use_past": self.use_past,
            "batch_size": self.batch_size,
        });
        if let serde_json::Value::Object(m) = j {
            v.extend(m);
        }
        serde_json::Value::Object(v)
    }
}

#[derive(Debug)]
struct Layer {
    layernorm1: LayerNorm,
    dense1: ColumnParallelLinear,
    dense2: ColumnParallelLinear,
    dense3: ColumnParallelLinear,
    attn_projection: RowParallelLinear,
    layernorm2: LayerNorm,
    mapping: ColumnParallelLinear,
    projection: RowParallelLinear,
}

impl Layer {
    fn new(p: &Vars, c: &PanguAlphaConfig, tp: TensorParallel) -> Result<Self> {
        let (h, f, std, eps) = (
            c.hidden_size,
            c.ffn_hidden_size,
            c.initializer_range,
            c.layernorm_epsilon,
        );
        let lay = WeightLayout::OutIn;
        let (a, o) = (p / "attention", p / "output");
        let col = |q: &Vars, name: &str, inp: usize, out: usize| {
            ColumnParallelLinear::new(&(q / name), inp, out, true, lay, tp, std)
        };
        let row = |q: &Vars, name: &str, inp: usize, out: usize| {
            RowParallelLinear::new(&(q / name), inp, out, true, lay, tp, std)
        };
        Ok(Layer {
            layernorm1: LayerNorm::new(&(p / "layernorm1"), h, eps)?,
            dense1: col(&a, "dense1", h, h)?,
            dense2: col(&a, "dense2", h, h)?,
            dense3: col(&a, "dense3", h, h)?,
            attn_projection: row(&a, "projection", h, h)?,
            layernorm2: LayerNorm::new(&(p / "layernorm2"), h, eps)?,
            mapping: col(&o, "mapping", h, f)?,
            projection: row(&o, "projection", f, h)?,
        })
    }
}

/// The PanGu-α language model with its (embedding-tied) head.
pub struct PanguAlphaHeadModel {
    config: PanguAlphaConfig,
    params: Params,
    word_embedding: Tensor,
    position_embedding: Tensor,
    top_query_embedding: Tensor,
    blocks: Vec<Layer>,
    layernorm: LayerNorm,
    top_query_layer: Layer,
    heads: i64,
    head_dim: i64,
    act: crate::layers::Activation,
}

impl std::fmt::Debug for PanguAlphaHeadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanguAlphaHeadModel")
            .field("config", &self.config)
            .field("parameters", &self.num_parameters())
            .finish()
    }
}

impl PanguAlphaHeadModel {
    /// A randomly initialised model (normal(0, initializer_range), norms 1, biases 0) on the
    /// CPU in f32; with `checkpoint_name_or_path` set, it is built from that checkpoint's
    /// weights instead.
    pub fn new(config: &PanguAlphaConfig) -> Result<Self> {
        if config.checkpoint_name_or_path.is_empty() {
            return Self::with_parallel(config, TensorParallel::single());
        }
        let dir = crate::auto::resolve_model_dir(&config.checkpoint_name_or_path)?;
        let ckpt = SafeTensors::open(&dir)?;
        let single = TensorParallel::single();
        Self::build(config, single, Some(&ckpt), Device::Cpu, DType::F32)
    }

    /// A randomly initialised model at a tensor-parallel position.
    pub fn with_parallel(config: &PanguAlphaConfig, tp: TensorParallel) -> Result<Self> {
        Self::build(config, tp, None, Device::Cpu, DType::F32)
    }

    /// The model with each parameter read from `ckpt` at `dtype` on `device`, or randomly
    /// initialised without one.
    fn build(
        config: &PanguAlphaConfig,
        tp: TensorParallel,
        ckpt: Option<&SafeTensors>,
        device: Device,
        dtype: DType,
    ) -> Result<Self> {
        config.validate("PanguAlphaConfig")?;
        let heads = HeadShard::plan(config.num_heads, config.num_heads, tp.rank, tp.world_size)?;
        // Names are matched exactly (`backbone.` prefix included).
        let exact = |n: &str| vec![n.to_string()];
        let pb = ParamBuilder::causal(ckpt, &exact).at(device, dtype)?;
        let root = Vars::root(&pb);
        let bb = &root / "backbone";
        let h = config.hidden_size as i64;
        let normal = Init::Normal(config.initializer_range);
        let emb = &bb / "embedding";
        let word_embedding = (&emb / "word_embedding").var(
            "embedding_table",
            &[config.vocab_size as i64, h],
            normal,
        )?;
        let position_embedding = (&emb / "position_embedding").var(
            "embedding_table",
            &[config.seq_length as i64, h],
            normal,
        )?;
        let blocks = (0..config.num_layers - 1)
            .map(|i| Layer::new(&(&bb / "blocks" / i), config, tp))
            .collect::<Result<Vec<_>>>()?;
        let layernorm = LayerNorm::new(
            &(&bb / "layernorm"),
            config.hidden_size,
            config.layernorm_epsilon,
        )?;
        let top_query_embedding = (&bb / "top_query_embedding").var(
            "embedding_table",
            &[config.seq_length as i64, h],
            normal,
        )?;
        let top_query_layer = Layer::new(&(&bb / "top_query_layer"), config, tp)?;
        let params = pb.finish(&|_| false)?;
        Ok(PanguAlphaHeadModel {
            act: crate::layers::Activation::from_name(&config.hidden_act)?,
            heads: heads.q_heads as i64,
            head_dim: (config.hidden_size / config.num_heads) as i64,
            config: config.clone(),
            params,
            word_embedding,
            position_embedding,
            top_query_embedding,
            blocks,
            layernorm,
            top_query_layer,
        })
    }

    /// `PanguAlphaHeadModel.from_pretrained(name_or_dir)`: a preset name (weights from
    /// `$MF_HOME` or the HF cache) or a directory written by `save_pretrained`.
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
        let mut config = PanguAlphaConfig::from_json_file(crate::auto::config_file(dir)?)?;
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
    pub fn config(&self) -> &PanguAlphaConfig {
        &self.config
    }

    /// A variable store over the model's parameters (for tch optimizers).
    pub fn var_store(&self) -> &nn::VarStore {
        self.params.var_store()
    }

    /// One layer; with `query` (the top query layer) the attention query is projected from it
    /// rather than from the normalised hidden state.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        i: usize,
        l: &Layer,
        x: &Tensor,
        query: Option<&Tensor>,
        mask: &AttnMask,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.size3()?;
        let (nh, hd) = (self.heads, self.head_dim);
        let c = &self.config;
        let ln = l.layernorm1.forward(x);
        let split = |y: Tensor| y.view([b, t, nh, hd]).transpose(1, 2);
        let q = split(l.dense1.forward_t(query.unwrap_or(&ln), train));
        let k = split(l.dense2.forward_t(&ln, train));
        let v = split(l.dense3.forward_t(&ln, train));
        let (k, v) = match cache {
            Some(cache) => cache.append(i, &k, &v)?,
            None => (k, v),
        };
        let p_attn = if train { c.attention_dropout_rate } else { 0.0 };
        let attn = sdpa(&q, &k, &v, mask, p_attn)
            .transpose(1, 2)
            .reshape([b, t, nh * hd]);
        let attn = l
            .attn_projection
            .forward_t(&attn, train)
            .dropout(c.hidden_dropout_rate, train);
        let residual = if c.post_layernorm_residual { &ln } else { x };
        let x = residual + attn;
        let ln = l.layernorm2.forward(&x);
        let m = l
            .projection
            .forward_t(&self.act.forward(&l.mapping.forward_t(&ln, train)), train)
            .dropout(c.hidden_dropout_rate, train);
        let residual = if c.post_layernorm_residual { &ln } else { &x };
        Ok(residual + m)
    }
}

impl CausalLM for PanguAlphaHeadModel {
    /// The final hidden states, the LM head's input (the last position only under
    /// `last_only`).
    fn hidden_states(
        &self,
        input: &ForwardInput<'_>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let ids = input
            .input_ids
            .ok_or_else(|| invalid("PanGu-α forward needs input_ids"))?;
        let dev = self.word_embedding.device();
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
        let max_pos = self.config.seq_length as i64;
        if t > 0 && (pos.max().int64_value(&[]) >= max_pos || pos.min().int64_value(&[]) < 0) {
            return Err(invalid(format!(
                "position {} is outside the {max_pos} learned positions (seq_length)",
                pos.max().int64_value(&[])
            )));
        }
        let max_id = self.config.vocab_size as i64;
        if t > 0 && (ids.max().int64_value(&[]) >= max_id || ids.min().int64_value(&[]) < 0) {
            return Err(invalid(format!(
                "input_ids contain a token id outside [0, {max_id})"
            )));
        }
        let embed = |table: &Tensor, idx: &Tensor| Tensor::embedding(table, idx, -1, false, false);
        let mut x = (embed(&self.word_embedding, &ids) + embed(&self.position_embedding, &pos))
            .dropout(self.config.embedding_dropout_prob, input.train);
        let mask = attention_mask(input.attention_mask, past, t, dev);
        for (i, l) in self.blocks.iter().enumerate() {
            x = self.layer_forward(i, l, &x, None, &mask, cache.as_deref_mut(), input.train)?;
        }
        let x = self.layernorm.forward(&x);
        let query = embed(&self.top_query_embedding, &pos);
        let x = self.layer_forward(
            self.blocks.len(),
            &self.top_query_layer,
            &x,
            Some(&query),
            &mask,
            cache.as_deref_mut(),
            input.train,
        )?;
        if let Some(c) = cache {
            c.advance(t as usize);
        }
        let x = if input.last_only {
            x.narrow(1, t - 1, 1)
        } else {
            x
        };
        Ok(x)
    }

    /// The head as a plain `[vocab, hidden]` matrix, when it is one.
    fn head_matrix(&self) -> Option<Tensor> {
        Some(self.word_embedding.shallow_clone())
    }

    fn forward(&self, input: &ForwardInput<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = self.hidden_states(input, cache)?;
        Ok(linear(&x, &self.word_embedding, None, WeightLayout::OutIn))
    }

    fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(self.config.num_layers, capacity)
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.config.seq_length)
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

impl PreTrainedModel for PanguAlphaHeadModel {
    fn model_type(&self) -> &str {
        "pangualpha"
    }

    fn task(&self) -> Task {
        Task::CausalLM
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.to_hf_json()
    }

    fn device(&self) -> tch::Device {
        self.word_embedding.device()
    }

    fn to(&mut self, device: Device, dtype: DType) -> Result<()> {
        self.params.to(device, dtype)
    }

    fn num_parameters(&self) -> usize {
        self.params.numel()
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params.list()
    }

    /// Names are matched exactly (`backbone.` prefix included).
    fn load_weights(&self, ckpt: &SafeTensors) -> Result<()> {
        self.params.load(ckpt, &|n| Some(n.to_string()), &|_| false)
    }

    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        self.params.save_pretrained(dir, self.config.to_hf_json())
    }

    fn lora_layers(&mut self) -> Vec<(String, &mut dyn crate::lora::LoraHost)> {
        let mut v: Vec<(String, &mut dyn crate::lora::LoraHost)> = Vec::new();
        let layers = self
            .blocks
            .iter_mut()
            .enumerate()
            .map(|(i, l)| (format!("backbone.blocks.{i}"), l))
            .chain(std::iter::once((
                "backbone.top_query_layer".to_string(),
                &mut self.top_query_layer,
            )));
        for (p, l) in layers {
            v.push((format!("{p}.attention.dense1"), &mut l.dense1));
            v.push((format!("{p}.attention.dense2"), &mut l.dense2));
            v.push((format!("{p}.attention.dense3"), &mut l.dense3));
            v.push((format!("{p}.attention.projection"), &mut l.attn_projection));
            v.push((format!("{p}.output.mapping"), &mut l.mapping));
            v.push((format!("{p}.output.projection"), &mut l.projection));
        }
        v
    }
}

/// One pipeline stage of PanGu-α at one tensor-parallel position, driven by mf-parallel.
/// Global layer `num_layers - 1` is the top query layer: the runtime runs the final LayerNorm
/// in front of it (`pre_layer`), and its attention query comes from the top query embedding.
pub struct PanguAlphaStage {
    config: PanguAlphaConfig,
    spec: crate::parallel::StageSpec,
    params: Params,
    word_embedding: Option<Tensor>,
    position_embedding: Option<Tensor>,
    top_query_embedding: Option<Tensor>,
    layers: Vec<Layer>,
    layernorm: Option<LayerNorm>,
    heads: i64,
    head_dim: i64,
    act: crate::layers::Activation,
}

impl PanguAlphaStage {
    /// Builds the stage `spec` describes.
    pub fn new(config: &PanguAlphaConfig, spec: crate::parallel::StageSpec) -> Result<Self> {
        config.validate("PanguAlphaConfig")?;
        if config.post_layernorm_residual {
            return Err(invalid(
                "post_layernorm_residual = true is not supported by the parallel runtime; train it on one device",
            ));
        }
        let n = config.num_layers;
        if spec.layers.end > n || spec.layers.is_empty() {
            return Err(invalid(format!(
                "pipeline stage layers {:?} do not fit a model of {n} layers",
                spec.layers
            )));
        }
        let tp = spec.tp;
        let heads = HeadShard::plan(config.num_heads, config.num_heads, tp.rank, tp.world_size)?;
        let pb = ParamBuilder::random();
        let bb = Vars::root(&pb) / "backbone";
        let h = config.hidden_size as i64;
        let normal = Init::Normal(config.initializer_range);
        let vocab = if spec.vocab_parallel {
            tp.shard(config.vocab_size, "vocabulary-parallel embedding")? as i64
        } else {
            config.vocab_size as i64
        };
        let emb = &bb / "embedding";
        let table = |p: &Vars, rows: i64| p.var("embedding_table", &[rows, h], normal);
        let word_embedding = (spec.first || spec.last)
            .then(|| table(&(&emb / "word_embedding"), vocab))
            .transpose()?;
        let position_embedding = spec
            .first
            .then(|| table(&(&emb / "position_embedding"), config.seq_length as i64))
            .transpose()?;
        let top = spec.layers.contains(&(n - 1));
        let top_query_embedding = top
            .then(|| table(&(&bb / "top_query_embedding"), config.seq_length as i64))
            .transpose()?;
        let layernorm = top
            .then(|| {
                LayerNorm::new(
                    &(&bb / "layernorm"),
                    config.hidden_size,
                    config.layernorm_epsilon,
                )
            })
            .transpose()?;
        let layers = spec
            .layers
            .clone()
            .map(|i| {
                if i == n - 1 {
                    Layer::new(&(&bb / "top_query_layer"), config, tp)
                } else {
                    Layer::new(&(&bb / "blocks" / i), config, tp)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let params = pb.finish(&|_| false)?;
        Ok(PanguAlphaStage {
            act: crate::layers::Activation::from_name(&config.hidden_act)?,
            heads: heads.q_heads as i64,
            head_dim: (config.hidden_size / config.num_heads) as i64,
            config: config.clone(),
            spec,
            params,
            word_embedding,
            position_embedding,
            top_query_embedding,
            layers,
            layernorm,
        })
    }

    fn layer(&self, layer: usize) -> Result<&Layer> {
        Ok(&self.layers[crate::parallel::local_layer(&self.spec, layer)?])
    }
}

impl crate::parallel::ParallelLM for PanguAlphaStage {
    fn spec(&self) -> &crate::parallel::StageSpec {
        &self.spec
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params.list()
    }

    fn shard_rule(&self, name: &str) -> crate::parallel::ShardRule {
        use crate::parallel::ShardRule::{Replicated, Split};
        if name.contains("word_embedding") {
            return if self.spec.vocab_parallel {
                Split { dim: 0, parts: 1 }
            } else {
                Replicated
            };
        }
        // Weights are [out, in]: dense1-3 and mapping split their outputs, the projections
        // their inputs.
        let column = [".dense1.", ".dense2.", ".dense3.", ".mapping."]
            .iter()
            .any(|p| name.contains(p));
        if column {
            Split { dim: 0, parts: 1 }
        } else if name.contains(".projection.weight") {
            Split { dim: 1, parts: 1 }
        } else {
            Replicated
        }
    }

    fn tied_embedding(&self) -> Option<&str> {
        Some("backbone.embedding.word_embedding.embedding_table")
    }

    fn grad_partial_over_tp(&self, name: &str) -> bool {
        // The top query embedding feeds the column-parallel query projection inside the
        // attention core: each rank's gradient covers its own heads only.
        name.contains("top_query_embedding")
    }

    fn has_dropout(&self) -> bool {
        let c = &self.config;
        c.embedding_dropout_prob > 0.0
            || c.hidden_dropout_rate > 0.0
            || c.attention_dropout_rate > 0.0
    }

    fn hidden_dropout(&self) -> f64 {
        self.config.hidden_dropout_rate
    }

    fn embedding_dropout(&self) -> f64 {
        self.config.embedding_dropout_prob
    }

    fn token_embedding(&self, ids: &Tensor) -> Result<Tensor> {
        let w = self
            .word_embedding
            .as_ref()
            .ok_or_else(|| invalid("this pipeline stage holds no embedding"))?;
        crate::parallel::vocab_embedding(w, ids, &self.spec)
    }

    fn embed_post(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        match &self.position_embedding {
            Some(p) => x + Tensor::embedding(p, positions, -1, false, false),
            None => x.shallow_clone(),
        }
    }

    fn has_pre_layer(&self, layer: usize) -> bool {
        layer == self.config.num_layers - 1
    }

    fn pre_layer(&self, layer: usize, x: &Tensor) -> Result<Tensor> {
        match (&self.layernorm, self.has_pre_layer(layer)) {
            (Some(ln), true) => Ok(ln.forward(x)),
            _ => Ok(x.shallow_clone()),
        }
    }

    fn norm(&self, layer: usize, sub: crate::parallel::Sublayer, x: &Tensor) -> Result<Tensor> {
        let l = self.layer(layer)?;
        Ok(match sub {
            crate::parallel::Sublayer::Attention => l.layernorm1.forward(x),
            crate::parallel::Sublayer::Mlp => l.layernorm2.forward(x),
        })
    }

    fn core(
        &self,
        layer: usize,
        sub: crate::parallel::Sublayer,
        h: &Tensor,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor> {
        let l = self.layer(layer)?;
        match sub {
            crate::parallel::Sublayer::Attention => {
                let (b, t, _) = h.size3()?;
                let (nh, hd) = (self.heads, self.head_dim);
                let split = |y: Tensor| y.view([b, t, nh, hd]).transpose(1, 2);
                let q_in = match (&self.top_query_embedding, self.has_pre_layer(layer)) {
                    (Some(e), true) => {
                        let pos = Tensor::arange(t, (Kind::Int64, h.device()))
                            .unsqueeze(0)
                            .expand([b, t], false);
                        Tensor::embedding(e, &pos, -1, false, false)
                    }
                    _ => h.shallow_clone(),
                };
                let q = split(l.dense1.forward_t(&q_in, true));
                let k = split(l.dense2.forward_t(h, true));
                let v = split(l.dense3.forward_t(h, true));
                let attn = crate::layers::causal_attention_seeded(
                    &q,
                    &k,
                    &v,
                    self.config.attention_dropout_rate,
                    dropout_seed,
                )
                .transpose(1, 2)
                .reshape([b, t, nh * hd]);
                Ok(l.attn_projection.forward_partial(&attn))
            }
            crate::parallel::Sublayer::Mlp => {
                let m = self.act.forward(&l.mapping.forward_t(h, true));
                Ok(l.projection.forward_partial(&m))
            }
        }
    }

    fn out_bias(&self, layer: usize, sub: crate::parallel::Sublayer) -> Option<Tensor> {
        let l = self.layer(layer).ok()?;
        match sub {
            crate::parallel::Sublayer::Attention => {
                l.attn_projection.bias().map(|t| t.shallow_clone())
            }
            crate::parallel::Sublayer::Mlp => l.projection.bias().map(|t| t.shallow_clone()),
        }
    }

    fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        // PanGu-α's final LayerNorm sits before the top query layer (`pre_layer`).
        Ok(x.shallow_clone())
    }

    fn head_weight(&self) -> Result<Tensor> {
        self.word_embedding
            .as_ref()
            .map(|t| t.shallow_clone())
            .ok_or_else(|| invalid("this pipeline stage holds no LM head"))
    }

    fn layer_of(&self, name: &str) -> Option<usize> {
        let top = self.config.num_layers - 1;
        if name.starts_with("backbone.top_query_layer.")
            || name.starts_with("backbone.layernorm.")
            || name.starts_with("backbone.top_query_embedding")
        {
            return Some(top);
        }
        name.strip_prefix("backbone.blocks.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn num_layers(&self) -> usize {
        self.config.num_layers
    }
}

impl crate::auto::FamilyConfig for PanguAlphaConfig {
    fn family_name() -> &'static str {
        "pangualpha"
    }

    fn model_type(&self) -> &'static str {
        "pangualpha"
    }

    fn config_json(&self) -> serde_json::Value {
        self.to_hf_json()
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.seq_length)
    }
}

impl crate::ModelConfig {
    /// The PanGu-α config, or an error naming the actual family.
    pub fn into_pangualpha(self) -> Result<PanguAlphaConfig> {
        self.into_config()
    }
}

/// The registry entry of this family (see [`crate::auto::FAMILIES`]).
pub const FAMILY: crate::auto::Family = crate::auto::Family {
    name: "pangualpha",
    title: "PanGu-α",
    model_types: &["pangualpha"],
    presets: crate::presets::PANGUALPHA,
    parse_preset: |p, origin| {
        let mut c = crate::auto::preset_config(&p.config, origin, |c: &PanguAlphaConfig| &c.extra)?;
        c.hub_repo = p.hub_repo.clone();
        c.validate(origin)?;
        Ok(crate::ModelConfig::new(c))
    },
    parse_json: |v, origin| {
        let c: PanguAlphaConfig = crate::auto::json_config(v, origin)?;
        c.validate(origin)?;
        Ok(crate::ModelConfig::new(c))
    },
    read_json: |path| {
        Ok(crate::ModelConfig::new(PanguAlphaConfig::from_json_file(
            path,
        )?))
    },
    causal_from_config: Some(|config| {
        Ok(Box::new(PanguAlphaHeadModel::new(
            config.downcast::<PanguAlphaConfig>()?,
        )?))
    }),
    tasks: &[crate::task::Task::CausalLM],
    load_causal: Some(|dir, device, dtype| {
        Ok(Box::new(PanguAlphaHeadModel::from_dir_on(
            dir, device, dtype,
        )?))
    }),
    load_task: None,
    from_config: None,
    parallel: Some(crate::parallel::ParallelFamily {
        dims: |config| {
            let c = config.downcast::<PanguAlphaConfig>()?;
            Ok(crate::parallel::ParallelDims {
                heads: c.num_heads,
                kv_heads: None,
                vocab: c.vocab_size,
                layers: c.num_layers,
            })
        },
        build_stage: |config, spec| {
            Ok(Box::new(PanguAlphaStage::new(
                config.downcast::<PanguAlphaConfig>()?,
                spec,
            )?))
        },
    }),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mindformers_seed_config_builds() {
        // PanguAlphaConfig(hidden_size=768, ffn_hidden_size=768*4, num_layers=12,
        // num_heads=12, checkpoint_name_or_path='')
        let c = PanguAlphaConfig {
            hidden_size: 768,
            ffn_hidden_size: 768 * 4,
            num_layers: 12,
            num_heads: 12,
            checkpoint_name_or_path: String::new(),
            ..Default::default()
        };
        c.validate("seed").unwrap();
        assert_eq!(
            c.num_parameters(),
            (40000 + 2 * 1024) * 768
                + 12 * (4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768 + 4 * 768)
                + 2 * 768
        );
    }

    #[test]
    fn fast_gelu_matches_mindspore_formula() {
        let x = Tensor::from_slice(&[-3.0f32, -0.5, 0.0, 0.7, 2.5]);
        let ax = x.abs();
        let ms = &x / ((&ax * -1.702).exp() + 1.0) * ((&x - &ax) * 0.851).exp();
        let d = (crate::layers::Activation::from_name("fast_gelu")
            .unwrap()
            .forward(&x)
            - ms)
            .abs()
            .max()
            .double_value(&[]);
        assert!(d < 1e-6, "{d}");
    }
}
