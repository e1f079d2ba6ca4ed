//! What a `Trainer` trains: a causal LM (text generation, generation-aware: LoRA, the
//! parallel runtime, `predict`) or a model with any other task head, whose loss the head
//! computes. Both share the weights IO the training loop needs.
use std::path::Path;

use mf_core::checkpoint::SafeTensors;
use mf_core::{invalid, DType, Device, Result};
use mf_models::{CausalLM, TaskModel};
use tch::Tensor;

/// The model under training.
pub enum TrainModel {
    /// A decoder-only language model.
    Causal(Box<dyn CausalLM>),
    /// An encoder (or any model) with a task head.
    Head(Box<dyn TaskModel>),
}

impl TrainModel {
    /// The causal LM, or an error naming what this trainer holds instead.
    pub fn causal(&self) -> Result<&dyn CausalLM> {
        match self {
            TrainModel::Causal(m) => Ok(m.as_ref()),
            TrainModel::Head(m) => Err(not_causal(m.as_ref())),
        }
    }

    /// The causal LM, mutably.
    pub fn causal_mut(&mut self) -> Result<&mut dyn CausalLM> {
        match self {
            TrainModel::Causal(m) => Ok(m.as_mut()),
            TrainModel::Head(m) => Err(not_causal(m.as_ref())),
        }
    }

    /// The task model, or an error when this is a causal LM.
    pub fn head(&self) -> Result<&dyn TaskModel> {
        match self {
            TrainModel::Head(m) => Ok(m.as_ref()),
            TrainModel::Causal(_) => {
                Err(invalid("this trainer holds a causal LM, not a task head"))
            }
        }
    }

    /// Where the weights live.
    pub fn device(&self) -> tch::Device {
        match self {
            TrainModel::Causal(m) => m.device(),
            TrainModel::Head(m) => m.device(),
        }
    }

    /// Moves the weights.
    pub fn to(&mut self, device: Device, dtype: DType) -> Result<()> {
        match self {
            TrainModel::Causal(m) => m.to(device, dtype),
            TrainModel::Head(m) => m.to(device, dtype),
        }
    }

    /// Trainable parameters under their checkpoint names.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        match self {
            TrainModel::Causal(m) => m.parameters(),
            TrainModel::Head(m) => m.parameters(),
        }
    }

    /// Number of parameters.
    pub fn num_parameters(&self) -> usize {
        match self {
            TrainModel::Causal(m) => m.num_parameters(),
            TrainModel::Head(m) => m.num_parameters(),
        }
    }

    /// Parameters doing matmul work per token (for MFU): without lookup-only embedding
    /// tables; the word table counts when a tied output layer (LM head, masked-LM decoder)
    /// multiplies by it.
    pub fn matmul_parameters(&self) -> usize {
        let params = self.parameters();
        let untied_output = params
            .iter()
            .any(|(n, _)| n == "lm_head.weight" || n.ends_with("decoder.weight"));
        let output_head = match self {
            TrainModel::Causal(_) => true,
            TrainModel::Head(m) => m.task() == mf_models::Task::MaskedLM,
        };
        crate::flops::matmul_parameters(&params, output_head && !untied_output)
    }

    /// Copies a checkpoint's tensors into the model.
    pub fn load_weights(&self, ckpt: &SafeTensors) -> Result<()> {
        match self {
            TrainModel::Causal(m) => m.load_weights(ckpt),
            TrainModel::Head(m) => m.load_weights(ckpt),
        }
    }

    /// Writes the model in the Hugging Face layout.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        match self {
            TrainModel::Causal(m) => m.save_pretrained(dir),
            TrainModel::Head(m) => m.save_pretrained(dir),
        }
    }

    /// Whether LoRA adapters are attached.
    pub fn has_lora(&mut self) -> bool {
        match self {
            TrainModel::Causal(m) => mf_models::lora::has_lora(m.as_mut()),
            TrainModel::Head(_) => false,
        }
    }
}

fn not_causal(m: &dyn TaskModel) -> mf_core::MfError {
    invalid(format!(
        "this trainer holds a {} model with a {} head, not a causal LM",
        m.model_type(),
        m.task()
    ))
}
