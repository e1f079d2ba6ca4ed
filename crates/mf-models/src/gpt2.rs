//! GPT-2 (`GPT2LMHeadModel`): learned positions, pre-LayerNorm blocks, gelu_new MLP, fused qkv
//! projection, LM head tied to the token embedding. Parameter names and layouts are Hugging
//! Face's, so HF checkpoints load and ours load in transformers.
use std::collections::BTreeMap;
use std::path::Path;

use mf_core::checkpoint::SafeTensors;
use mf_core::{invalid, DType, Device, MfError, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::generation::GenerationConfig;
use crate::layers::params::{prefixed_candidates, Init, ParamBuilder, Params, Vars};
use crate::layers::{
    attention_mask, linear, sdpa, AttnMask, ColumnParallelLinear, KvCache, LayerNorm,
    RowParallelLinear, TensorParallel, WeightLayout,
};
use crate::model::{CausalLM, ForwardInput};
use crate::task::{PreTrainedModel, Task};

/// GPT-2 hyperparameters. Accepts MindFormers' names (`hidden_size`, `num_layers`,
/// `num_heads`, `seq_length`) and Hugging Face `config.json` keys (`n_embd`, `n_layer`,
/// `n_head`, `n_positions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GPT2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Maximum sequence length (number of learned positions).
    #[serde(alias = "n_positions", alias = "max_position_embeddings")]
    pub seq_length: usize,
    /// Model width.
    #[serde(alias = "n_embd")]
    pub hidden_size: usize,
    /// Number of transformer blocks.
    #[serde(alias = "n_layer")]
    pub num_layers: usize,
    /// Attention heads per block.
    #[serde(alias = "n_head")]
    pub num_heads: usize,
    /// MLP width; `None` means `expand_ratio * hidden_size`.
    #[serde(alias = "n_inner")]
    pub ffn_hidden_size: Option<usize>,
    /// MLP width multiple when `ffn_hidden_size` is unset.
    pub expand_ratio: usize,
    /// LayerNorm epsilon.
    #[serde(alias = "layer_norm_epsilon")]
    pub layernorm_epsilon: f64,
    /// MLP activation, HF's names and semantics ([`crate::layers::Activation`]): `gelu_new`
    /// (GPT-2's tanh GeLU), `gelu` (erf), `relu`, ...
    #[serde(alias = "activation_function")]
    pub hidden_act: String,
    /// Dropout on embeddings (training only).
    #[serde(alias = "embd_pdrop")]
    pub embedding_dropout_prob: f64,
    /// Dropout on residual branches (training only).
    #[serde(alias = "resid_pdrop")]
    pub hidden_dropout_rate: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(alias = "attn_pdrop")]
    pub attention_dropout_rate: f64,
    /// Std of the normal init.
    pub initializer_range: f64,
    /// Beginning-of-sequence id.
    pub bos_token_id: u32,
    /// End-of-sequence id.
    pub eos_token_id: u32,
    /// Padding id (GPT-2 has none; eos is used).
    pub pad_token_id: Option<u32>,
    /// Use the KV cache when generating.
    pub use_past: bool,
    /// A preset name or directory whose weights `GPT2LMHeadModel::new` loads, as in
    /// MindFormers; empty means random initialisation.
    pub checkpoint_name_or_path: String,
    /// Hugging Face hub repository of the preset's weights.
    pub hub_repo: Option<String>,
    /// Must be true (GPT-2 scales scores by 1/sqrt(head_dim)).
    pub scale_attn_weights: bool,
    /// Unsupported variant flag; must be false.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Unsupported variant flag; must be false.
    pub reorder_and_upcast_attn: bool,
    /// Other `config.json` keys, kept so a saved config round-trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for GPT2Config {
    fn default() -> Self {
        GPT2Config {
            vocab_size: 50257,
            seq_length: 1024,
            hidden_size: 768,
            num_layers: 12,
            num_heads: 12,
            ffn_hidden_size: None,
            expand_ratio: 4,
            layernorm_epsilon: 1e-5,
            hidden_act: "gelu_new".into(),
            embedding_dropout_prob: 0.1,
            hidden_dropout_rate: 0.1,
            attention_dropout_rate: 0.1,
            initializer_range: 0.02,
            bos_token_id: 50256,
            eos_token_id: 50256,
            pad_token_id: None,
            use_past: true,
            checkpoint_name_or_path: String::new(),
            hub_repo: None,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
            extra: BTreeMap::new(),
        }
    }
}

/// Keys of HF's config that are MindFormers-side only or recomputed on save.
const NOT_SAVED: &[&str] = &[
    "model_type",
    "architectures",
    "torch_dtype",
    "dtype",
    "transformers_version",
];

impl GPT2Config {
    /// `GPT2Config.from_pretrained(name_or_dir)`: a preset name or a directory's `config.json`.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Self> {
        crate::auto::AutoConfig::from_pretrained(name_or_dir)?.into_gpt2()
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: GPT2Config = mf_core::config::read_json(path)?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// MLP width.
    pub fn ffn_size(&self) -> usize {
        self.ffn_hidden_size
            .unwrap_or(self.expand_ratio * self.hidden_size)
    }

    /// Checks the values make a buildable model.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let err = |m: String| Err(MfError::config(origin, m));
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.num_layers == 0
            || self.num_heads == 0
            || self.seq_length == 0
        {
            return err(
                "vocab_size, hidden_size, num_layers, num_heads and seq_length must be positive"
                    .into(),
            );
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return err(format!(
                "hidden_size {} is not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if let Some(mt) = self.extra.get("model_type").and_then(|v| v.as_str()) {
            if mt != "gpt2" {
                return err(format!("model_type is '{mt}', not 'gpt2'"));
            }
        }
        if !self.scale_attn_weights
            || self.scale_attn_by_inverse_layer_idx
            || self.reorder_and_upcast_attn
        {
            return err("scale_attn_weights=false, scale_attn_by_inverse_layer_idx and reorder_and_upcast_attn are not supported".into());
        }
        crate::layers::Activation::from_name(&self.hidden_act)
            .map_err(|e| MfError::config(origin, e.to_string()))?;
        for (name, p) in [
            ("embedding_dropout_prob", self.embedding_dropout_prob),
            ("hidden_dropout_rate", self.hidden_dropout_rate),
            ("attention_dropout_rate", self.attention_dropout_rate),
        ] {
            if !(0.0..1.0).contains(&p) {
                return err(format!("{name} = {p} is not in [0, 1)"));
            }
        }
        Ok(())
    }

    /// The Hugging Face `config.json` content (HF key names).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::Map::new();
        for (k, val) in &self.extra {
            if !NOT_SAVED.contains(&k.as_str()) {
                v.insert(k.clone(), val.clone());
            }
        }
        let j = serde_json::json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_positions": self.seq_length,
            "n_ctx": self.seq_length,
            "n_embd": self.hidden_size,
            "n_layer": self.num_layers,
            "n_head": self.num_heads,
            "n_inner": self.ffn_hidden_size,
            "activation_function": self.hidden_act,
            "layer_norm_epsilon": self.layernorm_epsilon,
            "embd_pdrop": self.embedding_dropout_prob,
            "resid_pdrop": self.hidden_dropout_rate,
            "attn_pdrop": self.attention_dropout_rate,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "scale_attn_weights": true,
            "use_cache": self.use_past,
            "tie_word_embeddings": true,
        });
        if let serde_json::Value::Object(m) = j {
            v.extend(m);
        }
        serde_json::Value::Object(v)
    }
}

#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    c_attn: ColumnParallelLinear,
    attn_proj: RowParallelLinear,
    ln_2: LayerNorm,
    c_fc: ColumnParallelLinear,
    mlp_proj: RowParallelLinear,
}

impl Block {
    /// Block `b` (`transformer.h.{i}`) at a tensor-parallel position, HF's initialisation.
    fn new(b: &Vars, config: &GPT2Config, tp: TensorParallel) -> Result<Self> {
        let (h, std) = (config.hidden_size, config.initializer_range);
        let proj_std = std / (2.0 * config.num_layers as f64).sqrt();
        let (attn, mlp) = (b / "attn", b / "mlp");
        let lay = WeightLayout::InOut;
        Ok(Block {
            ln_1: LayerNorm::new(&(b / "ln_1"), h, config.layernorm_epsilon)?,
            c_attn: ColumnParallelLinear::new(&(&attn / "c_attn"), h, 3 * h, true, lay, tp, std)?,
            attn_proj: RowParallelLinear::new(&(&attn / "c_proj"), h, h, true, lay, tp, proj_std)?,
            ln_2: LayerNorm::new(&(b / "ln_2"), h, config.layernorm_epsilon)?,
            c_fc: ColumnParallelLinear::new(
                &(&mlp / "c_fc"),
                h,
                config.ffn_size(),
                true,
                lay,
                tp,
                std,
            )?,
            mlp_proj: RowParallelLinear::new(
                &(&mlp / "c_proj"),
                config.ffn_size(),
                h,
                true,
                lay,
                tp,
                proj_std,
            )?,
        })
    }
}

/// The GPT-2 language model with its LM head.
pub struct GPT2LMHeadModel {
    config: GPT2Config,
    params: Params,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    act: crate::layers::Activation,
    heads: i64,
}

impl std::fmt::Debug for GPT2LMHeadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GPT2LMHeadModel")
            .field("config", &self.config)
            .field("parameters", &self.num_parameters())
            .finish()
    }
}

impl GPT2LMHeadModel {
    /// A randomly initialised model (HF's scheme: normal(0, initializer_range), residual
    /// projections scaled by 1/sqrt(2·num_layers)) on the CPU in f32; with
    /// `checkpoint_name_or_path` set, it is built from that checkpoint's weights instead.
    pub fn new(config: &GPT2Config) -> Result<Self> {
        if config.checkpoint_name_or_path.is_empty() {
            return Self::with_parallel(config, TensorParallel::single());
        }
        let dir = crate::auto::resolve_model_dir(&config.checkpoint_name_or_path)?;
        let ckpt = SafeTensors::open(&dir)?;
        let single = TensorParallel::single();
        Self::build(config, single, Some(&ckpt), Device::Cpu, DType::F32)
    }

    /// A randomly initialised model at a tensor-parallel position.
    pub fn with_parallel(config: &GPT2Config, tp: TensorParallel) -> Result<Self> {
        Self::build(config, tp, None, Device::Cpu, DType::F32)
    }

    /// The model with each parameter read from `ckpt` at `dtype` on `device`, or randomly
    /// initialised without one.
    fn build(
        config: &GPT2Config,
        tp: TensorParallel,
        ckpt: Option<&SafeTensors>,
        device: Device,
        dtype: DType,
    ) -> Result<Self> {
        config.validate("GPT2Config")?;
        // Checkpoints saved from `GPT2Model` have no `transformer.` prefix.
        let candidates = |n: &str| prefixed_candidates(n, "transformer");
        let pb = ParamBuilder::causal(ckpt, &candidates).at(device, dtype)?;
        let root = Vars::root(&pb);
        let t = &root / "transformer";
        let (h, std) = (config.hidden_size, config.initializer_range);
        let normal = Init::Normal(std);
        let wte = (&t / "wte").var("weight", &[config.vocab_size as i64, h as i64], normal)?;
        let wpe = (&t / "wpe").var("weight", &[config.seq_length as i64, h as i64], normal)?;
        let blocks = (0..config.num_layers)
            .map(|i| Block::new(&(&t / "h" / i), config, tp))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(&(&t / "ln_f"), h, config.layernorm_epsilon)?;
        let params = pb.finish(&ignored)?;
        Ok(GPT2LMHeadModel {
            act: crate::layers::Activation::from_name(&config.hidden_act)?,
            heads: (config.num_heads / tp.world_size) as i64,
            config: config.clone(),
            params,
            wte,
            wpe,
            blocks,
            ln_f,
        })
    }

    /// `GPT2LMHeadModel.from_pretrained(name_or_dir)`: a preset name (weights from `$MF_HOME`,
    /// the HF cache, or the hub) or a Hugging Face GPT-2 directory.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Self> {
        let dir = crate::auto::resolve_model_dir(name_or_dir)?;
        Self::from_dir(&dir)
    }

    /// Loads `config.json` + safetensors weights from a directory, on the CPU in f32.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_dir_on(dir, Device::Cpu, DType::F32)
    }

    /// Loads a directory with each parameter read straight from the checkpoint at `dtype` on
    /// `device` (no f32 copy first).
    pub fn from_dir_on(dir: &Path, device: Device, dtype: DType) -> Result<Self> {
        let mut config = GPT2Config::from_json_file(crate::auto::config_file(dir)?)?;
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
    pub fn config(&self) -> &GPT2Config {
        &self.config
    }

    /// A variable store over the model's parameters (for tch optimizers).
    pub fn var_store(&self) -> &nn::VarStore {
        self.params.var_store()
    }

    fn block_forward(
        &self,
        i: usize,
        blk: &Block,
        x: &Tensor,
        mask: &AttnMask,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.size3()?;
        let hd = self.config.hidden_size as i64 / self.config.num_heads as i64;
        let h = blk.ln_1.forward(x);
        let qkv = blk
            .c_attn
            .forward_t(&h, train)
            .view([b, t, 3, self.heads, hd])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let (k, v) = match cache {
            Some(c) => c.append(i, &k, &v)?,
            None => (k, v),
        };
        let dropout = if train {
            self.config.attention_dropout_rate
        } else {
            0.0
        };
        let attn = sdpa(&q, &k, &v, mask, dropout);
        let attn = attn.transpose(1, 2).reshape([b, t, self.heads * hd]);
        let attn = blk
            .attn_proj
            .forward_t(&attn, train)
            .dropout(self.config.hidden_dropout_rate, train);
        let x = x + attn;
        let m = self
            .act
            .forward(&blk.c_fc.forward_t(&blk.ln_2.forward(&x), train));
        let m = blk
            .mlp_proj
            .forward_t(&m, train)
            .dropout(self.config.hidden_dropout_rate, train);
        Ok(x + m)
    }
}

impl CausalLM for GPT2LMHeadModel {
    /// The final hidden states, the LM head's input (the last position only under
    /// `last_only`).
    fn hidden_states(
        &self,
        input: &ForwardInput<'_>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let ids = input
            .input_ids
            .ok_or_else(|| invalid("GPT-2 forward needs input_ids"))?;
        let dev = self.wte.device();
        let ids = ids.to_device(dev);
        let (b, t) = ids.size2().map_err(|_| {
            invalid(format!(
                "input_ids must be [batch, len], got {:?}",
                ids.size()
            ))
        })?;
        let past = cache.as_ref().map_or(0, |c| c.len()) as i64;
        if past + t > self.config.seq_length as i64 {
            return Err(invalid(format!(
                "sequence of {} tokens exceeds the model's {} positions",
                past + t,
                self.config.seq_length
            )));
        }
        if let Some(am) = input.attention_mask {
            if am.size() != [b, past + t] {
                return Err(MfError::Shape(format!(
                    "attention_mask is {:?}, expected [{b}, {}]",
                    am.size(),
                    past + t
                )));
            }
        }
        crate::task::check_same_shape("position_ids", input.position_ids, &[b, t])?;
        let pos = match input.position_ids {
            Some(p) => {
                let p = p.to_device(dev);
                crate::task::check_range(
                    "position_ids",
                    &p,
                    self.config.seq_length as i64,
                    "GPT-2's learned positions end there",
                )?;
                p
            }
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
        let mut x = (Tensor::embedding(&self.wte, &ids, -1, false, false)
            + Tensor::embedding(&self.wpe, &pos, -1, false, false))
        .dropout(self.config.embedding_dropout_prob, input.train);
        let mask = attention_mask(input.attention_mask, past, t, dev);
        for (i, blk) in self.blocks.iter().enumerate() {
            x = self.block_forward(i, blk, &x, &mask, cache.as_deref_mut(), input.train)?;
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
        Some(self.wte.shallow_clone())
    }

    fn forward(&self, input: &ForwardInput<'_>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = self.hidden_states(input, cache)?;
        Ok(linear(&x, &self.wte, None, WeightLayout::OutIn))
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
            bos_token_id: Some(self.config.bos_token_id),
            eos_token_id: vec![self.config.eos_token_id],
            pad_token_id: self.config.pad_token_id.or(Some(self.config.eos_token_id)),
            use_past: self.config.use_past,
            ..GenerationConfig::default()
        }
    }

    fn model_config(&self) -> Option<crate::ModelConfig> {
        Some(crate::ModelConfig::new(self.config.clone()))
    }
}

/// Checkpoint tensors that are not parameters: old checkpoints' causal-mask buffers and the
/// tied head's copy.
fn ignored(name: &str) -> bool {
    name.ends_with(".attn.bias") && !name.contains("c_attn")
        || name.ends_with(".attn.masked_bias")
        || name == "lm_head.weight"
}

impl PreTrainedModel for GPT2LMHeadModel {
    fn model_type(&self) -> &str {
        "gpt2"
    }

    fn task(&self) -> Task {
        Task::CausalLM
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.to_hf_json()
    }

    fn device(&self) -> tch::Device {
        self.wte.device()
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

    /// Accepts HF names with or without the `transformer.` prefix.
    fn load_weights(&self, ckpt: &SafeTensors) -> Result<()> {
        let rename = |name: &str| -> Option<String> {
            if name.starts_with("transformer.") {
                Some(name.to_string())
            } else {
                Some(format!("transformer.{name}"))
            }
        };
        self.params.load(ckpt, &rename, &ignored)
    }

    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        self.params.save_pretrained(dir, self.config.to_hf_json())
    }

    fn lora_layers(&mut self) -> Vec<(String, &mut dyn crate::lora::LoraHost)> {
        let mut v: Vec<(String, &mut dyn crate::lora::LoraHost)> = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("transformer.h.{i}");
            v.push((format!("{p}.attn.c_attn"), &mut b.c_attn));
            v.push((format!("{p}.attn.c_proj"), &mut b.attn_proj));
            v.push((format!("{p}.mlp.c_fc"), &mut b.c_fc));
            v.push((format!("{p}.mlp.c_proj"), &mut b.mlp_proj));
        }
        v
    }
}

/// One pipeline stage of GPT-2 at one tensor-parallel position, driven by mf-parallel: q/k/v
/// and `c_fc` are column-parallel (a rank holds whole heads), both `c_proj` row-parallel, the
/// tied embedding vocabulary-parallel or replicated.
pub struct GPT2Stage {
    config: GPT2Config,
    spec: crate::parallel::StageSpec,
    params: Params,
    wte: Option<Tensor>,
    wpe: Option<Tensor>,
    blocks: Vec<Block>,
    ln_f: Option<LayerNorm>,
    act: crate::layers::Activation,
    heads: i64,
}

impl GPT2Stage {
    /// Builds the stage `spec` describes with HF's random initialisation.
    pub fn new(config: &GPT2Config, spec: crate::parallel::StageSpec) -> Result<Self> {
        config.validate("GPT2Config")?;
        let tp = spec.tp;
        if spec.layers.end > config.num_layers || spec.layers.is_empty() {
            return Err(invalid(format!(
                "pipeline stage layers {:?} do not fit a model of {} layers",
                spec.layers, config.num_layers
            )));
        }
        tp.shard(config.num_heads, "attention heads")?;
        let pb = ParamBuilder::random();
        let t = Vars::root(&pb) / "transformer";
        let h = config.hidden_size as i64;
        let normal = Init::Normal(config.initializer_range);
        let vocab = if spec.vocab_parallel {
            tp.shard(config.vocab_size, "vocabulary-parallel embedding")? as i64
        } else {
            config.vocab_size as i64
        };
        let wte = (spec.first || spec.last)
            .then(|| (&t / "wte").var("weight", &[vocab, h], normal))
            .transpose()?;
        let wpe = spec
            .first
            .then(|| (&t / "wpe").var("weight", &[config.seq_length as i64, h], normal))
            .transpose()?;
        let blocks = spec
            .layers
            .clone()
            .map(|i| Block::new(&(&t / "h" / i), config, tp))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = spec
            .last
            .then(|| LayerNorm::new(&(&t / "ln_f"), config.hidden_size, config.layernorm_epsilon))
            .transpose()?;
        let params = pb.finish(&|_| false)?;
        Ok(GPT2Stage {
            act: crate::layers::Activation::from_name(&config.hidden_act)?,
            heads: (config.num_heads / tp.world_size) as i64,
            config: config.clone(),
            spec,
            params,
            wte,
            wpe,
            blocks,
            ln_f,
        })
    }

    fn block(&self, layer: usize) -> Result<&Block> {
        Ok(&self.blocks[crate::parallel::local_layer(&self.spec, layer)?])
    }
}

impl crate::parallel::ParallelLM for GPT2Stage {
    fn spec(&self) -> &crate::parallel::StageSpec {
        &self.spec
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params.list()
    }

    fn shard_rule(&self, name: &str) -> crate::parallel::ShardRule {
        use crate::parallel::ShardRule::{Replicated, Split};
        // Conv1D weights are [in, out]: column-parallel splits dim 1, row-parallel dim 0.
        if name.ends_with("wte.weight") {
            return if self.spec.vocab_parallel {
                Split { dim: 0, parts: 1 }
            } else {
                Replicated
            };
        }
        let is = |suffix: &str| name.ends_with(suffix);
        if is("attn.c_attn.weight") {
            Split { dim: 1, parts: 3 }
        } else if is("attn.c_attn.bias") {
            Split { dim: 0, parts: 3 }
        } else if is("mlp.c_fc.weight") {
            Split { dim: 1, parts: 1 }
        } else if is("mlp.c_fc.bias") || is("attn.c_proj.weight") || is("mlp.c_proj.weight") {
            Split { dim: 0, parts: 1 }
        } else {
            Replicated
        }
    }

    fn tied_embedding(&self) -> Option<&str> {
        Some("transformer.wte.weight")
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
        let wte = self
            .wte
            .as_ref()
            .ok_or_else(|| invalid("this pipeline stage holds no embedding"))?;
        crate::parallel::vocab_embedding(wte, ids, &self.spec)
    }

    fn embed_post(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        match &self.wpe {
            Some(wpe) => x + Tensor::embedding(wpe, positions, -1, false, false),
            None => x.shallow_clone(),
        }
    }

    fn norm(&self, layer: usize, sub: crate::parallel::Sublayer, x: &Tensor) -> Result<Tensor> {
        let b = self.block(layer)?;
        Ok(match sub {
            crate::parallel::Sublayer::Attention => b.ln_1.forward(x),
            crate::parallel::Sublayer::Mlp => b.ln_2.forward(x),
        })
    }

    fn core(
        &self,
        layer: usize,
        sub: crate::parallel::Sublayer,
        h: &Tensor,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor> {
        let b = self.block(layer)?;
        match sub {
            crate::parallel::Sublayer::Attention => {
                let (bs, t, _) = h.size3()?;
                let hd = self.config.hidden_size as i64 / self.config.num_heads as i64;
                let qkv = b
                    .c_attn
                    .forward_t(h, true)
                    .view([bs, t, 3, self.heads, hd])
                    .permute([2, 0, 3, 1, 4]);
                let attn = crate::layers::causal_attention_seeded(
                    &qkv.get(0),
                    &qkv.get(1),
                    &qkv.get(2),
                    self.config.attention_dropout_rate,
                    dropout_seed,
                );
                let attn = attn.transpose(1, 2).reshape([bs, t, self.heads * hd]);
                Ok(b.attn_proj.forward_partial(&attn))
            }
            crate::parallel::Sublayer::Mlp => {
                let m = self.act.forward(&b.c_fc.forward_t(h, true));
                Ok(b.mlp_proj.forward_partial(&m))
            }
        }
    }

    fn out_bias(&self, layer: usize, sub: crate::parallel::Sublayer) -> Option<Tensor> {
        let b = self.block(layer).ok()?;
        match sub {
            crate::parallel::Sublayer::Attention => b.attn_proj.bias().map(|t| t.shallow_clone()),
            crate::parallel::Sublayer::Mlp => b.mlp_proj.bias().map(|t| t.shallow_clone()),
        }
    }

    fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        let n = self
            .ln_f
            .as_ref()
            .ok_or_else(|| invalid("this pipeline stage holds no final norm"))?;
        Ok(n.forward(x))
    }

    fn head_weight(&self) -> Result<Tensor> {
        self.wte
            .as_ref()
            .map(|t| t.shallow_clone())
            .ok_or_else(|| invalid("this pipeline stage holds no LM head"))
    }

    fn layer_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix("transformer.h.")?
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

impl crate::auto::FamilyConfig for GPT2Config {
    fn family_name() -> &'static str {
        "gpt2"
    }

    fn model_type(&self) -> &'static str {
        "gpt2"
    }

    fn config_json(&self) -> serde_json::Value {
        self.to_hf_json()
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.seq_length)
    }
}

impl crate::ModelConfig {
    /// The GPT-2 config, or an error naming the actual family.
    pub fn into_gpt2(self) -> Result<GPT2Config> {
        self.into_config()
    }
}

/// The registry entry of this family (see [`crate::auto::FAMILIES`]).
pub const FAMILY: crate::auto::Family = crate::auto::Family {
    name: "gpt2",
    title: "GPT-2",
    model_types: &["gpt2"],
    presets: crate::presets::GPT2,
    parse_preset: |p, origin| {
        let mut c = crate::auto::preset_config(&p.config, origin, |c: &GPT2Config| &c.extra)?;
        c.hub_repo = p.hub_repo.clone();
        c.validate(origin)?;
        Ok(crate::ModelConfig::new(c))
    },
    parse_json: |v, origin| {
        let c: GPT2Config = crate::auto::json_config(v, origin)?;
        c.validate(origin)?;
        Ok(crate::ModelConfig::new(c))
    },
    read_json: |path| Ok(crate::ModelConfig::new(GPT2Config::from_json_file(path)?)),
    causal_from_config: Some(|config| {
        Ok(Box::new(GPT2LMHeadModel::new(
            config.downcast::<GPT2Config>()?,
        )?))
    }),
    tasks: &[crate::task::Task::CausalLM],
    load_causal: Some(|dir, device, dtype| {
        Ok(Box::new(GPT2LMHeadModel::from_dir_on(dir, device, dtype)?))
    }),
    load_task: None,
    from_config: None,
    parallel: Some(crate::parallel::ParallelFamily {
        dims: |config| {
            let c = config.downcast::<GPT2Config>()?;
            Ok(crate::parallel::ParallelDims {
                heads: c.num_heads,
                kv_heads: None,
                vocab: c.vocab_size,
                layers: c.num_layers,
            })
        },
        build_stage: |config, spec| {
            Ok(Box::new(GPT2Stage::new(
                config.downcast::<GPT2Config>()?,
                spec,
            )?))
        },
    }),
};
