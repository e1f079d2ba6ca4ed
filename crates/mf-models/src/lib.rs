//! Models: configs, parallel-aware layers, GPT-2, LLaMA, BLOOM, generation and the Auto registry.
pub mod auto;
pub mod bloom;
pub mod generation;
pub mod gpt2;
pub mod layers;
pub mod llama;
pub mod model;

pub use auto::{AutoConfig, AutoModel, ModelConfig};
pub use bloom::{BloomConfig, BloomForCausalLM};
pub use generation::{generate, GenerationConfig, GenerationOverrides, Streamer, TextStreamer};
pub use gpt2::{GPT2Config, GPT2LMHeadModel};
pub use llama::{LlamaConfig, LlamaForCausalLM, RopeScalingConfig};
pub use model::{CausalLM, ForwardInput};
