//! `set_parallel_config` / `set_recompute_config` arguments (MindFormers' names and defaults),
//! validated on their own and against a model.
use mf_core::{invalid, Result};
use serde::{Deserialize, Serialize};

/// The parallel layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParallelConfig {
    /// Data-parallel ranks.
    pub data_parallel: usize,
    /// Tensor (model) parallel ranks.
    pub model_parallel: usize,
    /// Pipeline stages.
    pub pipeline_stage: usize,
    /// Micro-batches per step (pipeline).
    pub micro_batch_num: usize,
    /// Copies each batch is split into to overlap communication and compute.
    pub micro_batch_interleave_num: usize,
    /// Shard LayerNorm/dropout regions along the sequence across the tensor-parallel ranks;
    /// with `model_parallel = 1` one rank holds the whole sequence, so it changes nothing.
    pub use_seq_parallel: bool,
    /// Replicate the embedding / LM head on every tensor-parallel rank (MindFormers' default);
    /// `false` splits it over the vocabulary and computes a vocabulary-parallel cross-entropy.
    pub vocab_emb_dp: bool,
    /// Gradient buckets per pipeline stage: each bucket's data-parallel reduction starts as
    /// soon as its layers' gradients are final, while backward goes on.
    pub gradient_aggregation_group: usize,
    /// Shard optimizer state over data-parallel ranks (ZeRO-1; MindFormers'
    /// `enable_parallel_optimizer`).
    pub optimizer_shard: bool,
    /// Expert-parallel ranks (mixture of experts); only 1 is accepted: no MoE model exists yet.
    pub expert_parallel: usize,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig {
            data_parallel: 1,
            model_parallel: 1,
            pipeline_stage: 1,
            micro_batch_num: 1,
            micro_batch_interleave_num: 1,
            use_seq_parallel: false,
            vocab_emb_dp: true,
            gradient_aggregation_group: 4,
            optimizer_shard: false,
            expert_parallel: 1,
        }
    }
}

impl ParallelConfig {
    /// Checks the values are consistent.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("data_parallel", self.data_parallel),
            ("model_parallel", self.model_parallel),
            ("pipeline_stage", self.pipeline_stage),
            ("micro_batch_num", self.micro_batch_num),
            (
                "micro_batch_interleave_num",
                self.micro_batch_interleave_num,
            ),
            (
                "gradient_aggregation_group",
                self.gradient_aggregation_group,
            ),
            ("expert_parallel", self.expert_parallel),
        ] {
            if v == 0 {
                return Err(invalid(format!("{name} must be at least 1")));
            }
        }
        if self.expert_parallel > 1 {
            return Err(invalid(format!(
                "expert_parallel = {} needs a mixture-of-experts model, and none exists here yet; set expert_parallel = 1",
                self.expert_parallel
            )));
        }
        if self.micro_batch_num < self.pipeline_stage {
            return Err(invalid(format!(
                "micro_batch_num ({}) must be at least pipeline_stage ({})",
                self.micro_batch_num, self.pipeline_stage
            )));
        }
        Ok(())
    }

    /// Ranks the layout needs.
    pub fn device_num(&self) -> usize {
        self.data_parallel * self.model_parallel * self.pipeline_stage
    }

    /// Whether this is plain single-device training.
    pub fn is_single_device(&self) -> bool {
        self.device_num() == 1 && self.micro_batch_interleave_num == 1 && self.micro_batch_num == 1
    }

    /// Checks the layout against a model: `device_num` ranks, heads (and a split vocabulary)
    /// divisible by `model_parallel`, at least one layer per stage, a global batch that splits
    /// into data-parallel shards, micro-batches and interleaved copies.
    pub fn validate_for(
        &self,
        model: &mf_models::ModelConfig,
        device_num: Option<usize>,
        global_batch: usize,
    ) -> Result<()> {
        self.validate()?;
        if let Some(n) = device_num {
            if n != self.device_num() {
                return Err(invalid(format!(
                    "data_parallel ({}) x model_parallel ({}) x pipeline_stage ({}) = {} ranks, but the context has device_num = {n}; make them equal",
                    self.data_parallel,
                    self.model_parallel,
                    self.pipeline_stage,
                    self.device_num()
                )));
            }
        }
        mf_models::parallel::check_layout(
            model,
            self.model_parallel,
            self.pipeline_stage,
            !self.vocab_emb_dp,
        )?;
        let split = self.data_parallel * self.micro_batch_num * self.micro_batch_interleave_num;
        if global_batch == 0 || !global_batch.is_multiple_of(split) {
            return Err(invalid(format!(
                "the batch of {global_batch} rows does not split into data_parallel ({}) x micro_batch_num ({}) x micro_batch_interleave_num ({}) = {split} equal parts; use a batch size that is a multiple of {split}",
                self.data_parallel, self.micro_batch_num, self.micro_batch_interleave_num
            )));
        }
        Ok(())
    }
}

/// Recompute (activation checkpointing) options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecomputeConfig {
    /// Recompute every layer's activations in backward.
    pub recompute: bool,
    /// Recompute only the attention core.
    pub select_recompute: bool,
    /// Recompute the optimizer-parallel all-gathers.
    pub parallel_optimizer_comm_recompute: bool,
    /// Under recompute, redo the model-parallel communication of a recomputed layer (the
    /// default, as MindFormers); `false` keeps its results from the first forward instead.
    pub mp_comm_recompute: bool,
    /// Keep retained layer outputs sliced across model-parallel ranks.
    pub recompute_slice_activation: bool,
}

impl RecomputeConfig {
    /// Whether any recompute is asked for.
    pub fn any(&self) -> bool {
        self.recompute || self.select_recompute
    }

    /// Checks the options fit together.
    pub fn validate(&self) -> Result<()> {
        if self.recompute && self.select_recompute {
            return Err(invalid("recompute and select_recompute are exclusive: full recompute already covers attention"));
        }
        if self.parallel_optimizer_comm_recompute {
            return Err(invalid(
                "parallel_optimizer_comm_recompute recomputes optimizer-parallel all-gathers made inside the forward pass                  (parameter sharding, ZeRO-3); this runtime's optimizer parallel is ZeRO-1, which gathers parameters once                  after the update, so there is nothing to recompute: leave it false",
            ));
        }
        if self.recompute_slice_activation && !self.recompute {
            return Err(invalid(
                "recompute_slice_activation slices the layer inputs kept for full recompute; it needs recompute = true",
            ));
        }
        Ok(())
    }
}

impl Default for RecomputeConfig {
    fn default() -> Self {
        RecomputeConfig {
            recompute: false,
            select_recompute: false,
            parallel_optimizer_comm_recompute: false,
            mp_comm_recompute: true,
            recompute_slice_activation: false,
        }
    }
}
