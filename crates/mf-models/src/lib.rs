//! Models: configs, parallel-aware layers, GPT-2, LLaMA, BLOOM, GLM-4, PanGu-α,
//! generation and the Auto registry.
pub mod auto;
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

pub use auto::{AutoConfig, AutoModel, ModelConfig};
pub use bloom::{BloomConfig, BloomForCausalLM};
pub use generation::{generate, GenerationConfig, GenerationOverrides, Streamer, TextStreamer};
pub use glm::{GlmConfig, GlmForCausalLM};
pub use gpt2::{GPT2Config, GPT2LMHeadModel};
pub use llama::{LlamaConfig, LlamaForCausalLM, RopeScalingConfig};
pub use lora::{LoraConfig, LoraSummary};
pub use model::{CausalLM, ForwardInput};
pub use pangualpha::{PanguAlphaConfig, PanguAlphaHeadModel};
