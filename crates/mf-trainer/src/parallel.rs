//! `set_parallel_config` / `set_recompute_config` arguments (MindFormers' names and defaults).
//!
//! These are validated and stored by the Trainer. Running a layout other than one device, or
//! recompute, needs the parallel runtime; until it exists `train()` refuses such a config with
//! a clear error instead of silently training on one device.
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
        ] {
            if v == 0 {
                return Err(invalid(format!("{name} must be at least 1")));
            }
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
}

/// Recompute (activation checkpointing) options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecomputeConfig {
    /// Recompute every layer's activations in backward.
    pub recompute: bool,
    /// Recompute only the attention core.
    pub select_recompute: bool,
    /// Recompute the optimizer-parallel all-gathers.
    pub parallel_optimizer_comm_recompute: bool,
    /// Recompute model-parallel communication (MindFormers' default is true).
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
        Ok(())
    }
}
