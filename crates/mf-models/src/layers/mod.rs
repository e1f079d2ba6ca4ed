//! Building blocks shared by the model files. Linear layers are tensor-parallel aware: a
//! column- or row-parallel linear with a world size of 1 is a plain linear.
pub mod activation;
pub mod attention;
pub mod dropout;
pub mod kv_cache;
pub mod linear;
pub mod lm_loss;
pub mod norm;
pub mod params;
pub mod rotary;

pub use activation::Activation;
pub use attention::{
    alibi_slopes, attention_mask, causal_attention_seeded, sdpa, AttnMask, HeadShard,
};
pub use dropout::{hash_dropout, hash_uniform};
pub use kv_cache::{KvCache, LayerCache};
pub use linear::{
    linear, linears, ColumnParallelLinear, RowParallelLinear, TensorParallel, WeightLayout,
};
pub use lm_loss::{lm_head_cross_entropy, VocabShard};
pub use norm::{LayerNorm, RmsNorm};
pub use rotary::{apply_rotary, apply_rotary_interleaved, RopeScaling, RotaryEmbedding};
