//! mindformers-rs core: device and dtype, errors, config IO, safetensors checkpoints, the model
//! file cache, collective communication between ranks (`comm`), and `init_context` (`context`).
//!
//! Without the `tch` feature (on by default) only what needs no libtorch is built: errors,
//! config IO, atomic file writes, the model file cache and the allocator setting, which is what
//! `mf-tokenizers` needs.
#[cfg(feature = "tch")]
pub mod checkpoint;
#[cfg(feature = "tch")]
pub mod comm;
pub mod config;
#[cfg(feature = "tch")]
pub mod context;
#[cfg(feature = "tch")]
pub mod device;
pub mod error;
pub mod file;
pub mod hub;
pub mod memory;

#[cfg(feature = "tch")]
pub use context::{init_context, Context, ContextConfig, ParallelContextConfig, ParallelMode};
#[cfg(feature = "tch")]
pub use device::{DType, Device};
pub use error::{guard, invalid, MfError, Result};
