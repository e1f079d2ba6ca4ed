//! Models: configs, parallel-aware layers, GPT-2, LLaMA, BLOOM, GLM-4, PanGu-α, the BERT
//! family, the task-head interface, generation and the family registry.
pub mod auto;
pub mod bert;
pub mod bloom;
pub mod generation;
pub mod glm;
pub mod gpt2;
pub mod layers;
pub mod llama;
pub mod lora;
pub mod model;
pub mod pangualpha;
pub mod parallel;
pub mod task;

pub use auto::{
    AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
    AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
    AutoModelForTokenClassification, FamilyConfig, ModelConfig,
};
pub use bert::{
    Bert, BertConfig, BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
    BertForTokenClassification, BertModel, RobertaForMaskedLM, RobertaForQuestionAnswering,
    RobertaForSequenceClassification, RobertaForTokenClassification, RobertaModel,
};
pub use bloom::{BloomConfig, BloomForCausalLM};
pub use generation::{generate, GenerationConfig, GenerationOverrides, Streamer, TextStreamer};
pub use glm::{GlmConfig, GlmForCausalLM};
pub use gpt2::{GPT2Config, GPT2LMHeadModel};
pub use llama::{LlamaConfig, LlamaForCausalLM, RopeScalingConfig};
pub use lora::{LoraConfig, LoraSummary};
pub use model::{CausalLM, ForwardInput};
pub use pangualpha::{PanguAlphaConfig, PanguAlphaHeadModel};
pub use task::{ModelInputs, ModelOutput, PreTrainedModel, Task, TaskModel};
