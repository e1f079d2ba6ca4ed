//! What a model family provides to the parallel runtime (mf-parallel): one pipeline stage of
//! the model at one tensor-parallel position, cut at the points where the runtime communicates.
//!
//! Every family here is a pre-norm decoder, so a layer is two sublayers of the form
//! `x + dropout(reduce(core(gather(norm(x)))) + bias)`. The runtime owns `gather`/`reduce` (the
//! Megatron `f`/`g` regions, or their sequence-parallel all-gather / reduce-scatter) and runs
//! backward one segment at a time between them (tch has no custom autograd functions); the
//! family supplies `norm`, `core` (column-parallel in, attention or MLP, row-parallel out,
//! returning this rank's partial sum) and `out_bias`.
use std::ops::Range;

use mf_core::{invalid, Result};
use tch::Tensor;

use crate::layers::TensorParallel;
use crate::ModelConfig;

/// The two sublayers of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sublayer {
    /// Self-attention.
    Attention,
    /// The feed-forward block.
    Mlp,
}

impl Sublayer {
    /// Both sublayers in forward order.
    pub const ALL: [Sublayer; 2] = [Sublayer::Attention, Sublayer::Mlp];
}

/// How a full (checkpoint) parameter maps onto tensor-parallel ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardRule {
    /// Every rank holds the whole tensor.
    Replicated,
    /// Split along `dim`; a fused tensor of `parts` equal blocks along `dim` (GPT-2's q|k|v)
    /// splits each block, so a rank holds its slice of every block, concatenated.
    Split {
        /// The sharded dimension.
        dim: i64,
        /// Fused blocks along `dim`.
        parts: i64,
    },
}

impl ShardRule {
    /// This rank's shard of a full tensor.
    pub fn shard(&self, full: &Tensor, tp: TensorParallel) -> Result<Tensor> {
        match *self {
            ShardRule::Replicated => Ok(full.shallow_clone()),
            ShardRule::Split { dim, parts } => {
                let n = full.size()[dim as usize];
                let ways = parts * tp.world_size as i64;
                if n % ways != 0 {
                    return Err(invalid(format!(
                        "a tensor of shape {:?} does not split into {ways} equal blocks along dim {dim}",
                        full.size()
                    )));
                }
                let blocks: Vec<Tensor> = full
                    .chunk(parts, dim)
                    .iter()
                    .map(|b| b.chunk(tp.world_size as i64, dim)[tp.rank].shallow_clone())
                    .collect();
                Ok(Tensor::cat(&blocks, dim).contiguous())
            }
        }
    }

    /// The full tensor from every rank's shard, rank order (the inverse of [`ShardRule::shard`]).
    pub fn unshard(&self, shards: &[Tensor]) -> Tensor {
        match *self {
            ShardRule::Replicated => shards[0].shallow_clone(),
            ShardRule::Split { dim, parts } => {
                let per_rank: Vec<Vec<Tensor>> =
                    shards.iter().map(|s| s.chunk(parts, dim)).collect();
                let mut blocks = Vec::new();
                for p in 0..parts as usize {
                    for r in per_rank.iter() {
                        blocks.push(r[p].shallow_clone());
                    }
                }
                Tensor::cat(&blocks, dim)
            }
        }
    }
}

/// Which part of the model a rank builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpec {
    /// Global indices of the decoder layers on this stage.
    pub layers: Range<usize>,
    /// The first stage holds the embeddings.
    pub first: bool,
    /// The last stage holds the final norm and the LM head.
    pub last: bool,
    /// Tensor-parallel position.
    pub tp: TensorParallel,
    /// Split the (tied) embedding / LM head over the vocabulary across the tensor-parallel
    /// ranks (MindFormers' `vocab_emb_dp = false`); otherwise every rank holds all of it.
    pub vocab_parallel: bool,
}

/// One pipeline stage of a causal LM at one tensor-parallel position.
pub trait ParallelLM: Send {
    /// What this stage holds.
    fn spec(&self) -> &StageSpec;
    /// This rank's parameters (local shards) under their checkpoint names, sorted.
    fn parameters(&self) -> Vec<(String, Tensor)>;
    /// How the parameter `name` is sharded over tensor-parallel ranks.
    fn shard_rule(&self, name: &str) -> ShardRule;
    /// The checkpoint name of the embedding the LM head is tied to (held by the first and the
    /// last stage), if tied.
    fn tied_embedding(&self) -> Option<&str>;
    /// Whether any dropout is active in training (the runtime then seeds each segment).
    fn has_dropout(&self) -> bool;
    /// Dropout on the sublayer outputs (applied by the runtime).
    fn hidden_dropout(&self) -> f64;
    /// Dropout on the embeddings (applied by the runtime after `embed_post`).
    fn embedding_dropout(&self) -> f64;
    /// Whether a parameter's gradient is a partial sum over the tensor-parallel ranks even
    /// without sequence parallelism (a replicated tensor used inside a sharded core).
    fn grad_partial_over_tp(&self, _name: &str) -> bool {
        false
    }
    /// Whether layer `layer` starts with an extra piece before its sublayers.
    fn has_pre_layer(&self, _layer: usize) -> bool {
        false
    }
    /// That piece (PanGu-α: the final LayerNorm in front of the top query layer); its output
    /// is the layer's input and residual.
    fn pre_layer(&self, _layer: usize, x: &Tensor) -> Result<Tensor> {
        Ok(x.shallow_clone())
    }
    /// First stage: token embeddings of `ids` `[b, t]`. With a vocabulary-parallel table,
    /// rows of ids held by other ranks are zero (a partial sum over the group).
    fn token_embedding(&self, ids: &Tensor) -> Result<Tensor>;
    /// First stage: what follows the complete token embeddings (positions), before dropout;
    /// `positions` match the rows of `x` (a sequence shard under sequence parallelism).
    fn embed_post(&self, x: &Tensor, positions: &Tensor) -> Tensor;
    /// The norm in front of a sublayer.
    fn norm(&self, layer: usize, sub: Sublayer, x: &Tensor) -> Result<Tensor>;
    /// Column-parallel projection, attention / MLP, row-parallel projection without its bias:
    /// this rank's partial sum, in training. `h` holds the whole sequence; attention dropout
    /// (if any) draws its mask from `dropout_seed` ([`crate::layers::hash_dropout`]).
    fn core(
        &self,
        layer: usize,
        sub: Sublayer,
        h: &Tensor,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor>;
    /// The bias added once after the partial sums are reduced.
    fn out_bias(&self, layer: usize, sub: Sublayer) -> Option<Tensor>;
    /// Last stage: the final norm.
    fn final_norm(&self, x: &Tensor) -> Result<Tensor>;
    /// Last stage: the LM head rows this rank holds, `[vocab or vocab / tp, hidden]`.
    fn head_weight(&self) -> Result<Tensor>;
    /// The decoder layer a parameter belongs to (`None` for embeddings and the final norm).
    fn layer_of(&self, name: &str) -> Option<usize>;
    /// Vocabulary size of the whole model.
    fn vocab_size(&self) -> usize;
    /// Decoder layers of the whole model.
    fn num_layers(&self) -> usize;
}

/// Token embeddings from a table that is whole or, under `spec.vocab_parallel`, this rank's
/// vocabulary rows (other ranks' ids give zero rows: a partial sum over the group).
pub fn vocab_embedding(table: &Tensor, ids: &Tensor, spec: &StageSpec) -> Result<Tensor> {
    if !spec.vocab_parallel {
        return Ok(Tensor::embedding(table, ids, -1, false, false));
    }
    let local = table.size()[0];
    let start = local * spec.tp.rank as i64;
    let mine = ids.ge(start).logical_and(&ids.lt(start + local));
    let idx = (ids - start).where_scalarother(&mine, 0);
    let e = Tensor::embedding(table, &idx, -1, false, false);
    let keep = mine.unsqueeze(-1).to_kind(e.kind());
    Ok(e * keep)
}

/// The index among a stage's own layers of global `layer`, or an error if the stage does not
/// hold it.
pub fn local_layer(spec: &StageSpec, layer: usize) -> Result<usize> {
    if spec.layers.contains(&layer) {
        Ok(layer - spec.layers.start)
    } else {
        Err(invalid(format!(
            "layer {layer} is not on this pipeline stage ({:?})",
            spec.layers
        )))
    }
}

/// What a family with a parallel implementation gives the parallel engine (see
/// [`crate::auto::Family::parallel`]).
pub struct ParallelFamily {
    /// The sizes the layout is checked against.
    pub dims: fn(&ModelConfig) -> Result<ParallelDims>,
    /// Builds one stage (random weights: the runtime copies the shards of the real weights in).
    pub build_stage: fn(&ModelConfig, StageSpec) -> Result<Box<dyn ParallelLM>>,
}

/// The sizes of a model that a parallel layout must divide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelDims {
    /// Attention (query) heads.
    pub heads: usize,
    /// Key/value heads of grouped-query attention, where they differ from `heads` by design.
    pub kv_heads: Option<usize>,
    /// Vocabulary rows.
    pub vocab: usize,
    /// Decoder layers.
    pub layers: usize,
}

/// The families with a parallel implementation, as prose lists them ("A, B and C").
fn parallel_titles() -> String {
    let t: Vec<&str> = crate::auto::FAMILIES
        .iter()
        .filter(|f| f.parallel.is_some())
        .map(|f| f.title)
        .collect();
    match t.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        Some((last, _)) => last.to_string(),
        None => "no family".into(),
    }
}

/// The parallel hooks of `config`'s family, or `unsupported`'s error naming the families that
/// have them.
fn parallel_family(
    config: &ModelConfig,
    unsupported: fn(&str, &str) -> String,
) -> Result<&'static ParallelFamily> {
    config
        .family()?
        .parallel
        .as_ref()
        .ok_or_else(|| invalid(unsupported(&parallel_titles(), config.model_type())))
}

/// The decoder layers of a model, for splitting it into stages.
pub fn layer_count(config: &ModelConfig) -> Result<usize> {
    let fam = parallel_family(config, |fams, mt| {
        format!("parallel training supports {fams} so far; this model is {mt}")
    })?;
    Ok((fam.dims)(config)?.layers)
}

/// Builds one stage of the model `config` describes (random weights: the runtime copies the
/// shards of the real weights in).
pub fn build_stage(config: &ModelConfig, spec: StageSpec) -> Result<Box<dyn ParallelLM>> {
    let fam = parallel_family(config, |fams, mt| {
        format!(
            "parallel training (data/model/pipeline parallel, recompute) supports {fams} so far; \
             this model is {mt}. Train it on one device"
        )
    })?;
    (fam.build_stage)(config, spec)
}

/// Attention-head and vocabulary divisibility and layer count of a model against a layout.
pub fn check_layout(
    config: &ModelConfig,
    model_parallel: usize,
    stages: usize,
    vocab_parallel: bool,
) -> Result<()> {
    let fam = parallel_family(config, |fams, mt| {
        format!(
            "parallel training supports {fams} so far; this model is {mt}. Train it on one device"
        )
    })?;
    let ParallelDims {
        heads,
        kv_heads,
        vocab,
        layers,
    } = (fam.dims)(config)?;
    if let Some(kv) = kv_heads {
        if !kv.is_multiple_of(model_parallel) {
            return Err(invalid(format!(
                "the model's {kv} key/value heads are not divisible by model_parallel = {model_parallel}; pick a model_parallel that divides them"
            )));
        }
    }
    if !heads.is_multiple_of(model_parallel) {
        return Err(invalid(format!(
            "num_heads = {heads} is not divisible by model_parallel = {model_parallel}; pick a model_parallel that divides it"
        )));
    }
    if vocab_parallel && !vocab.is_multiple_of(model_parallel) {
        return Err(invalid(format!(
            "vocab_size = {vocab} is not divisible by model_parallel = {model_parallel}; pad the vocabulary or set vocab_emb_dp = true"
        )));
    }
    if layers < stages {
        return Err(invalid(format!(
            "the model has {layers} layers, fewer than pipeline_stage = {stages}"
        )));
    }
    Ok(())
}
