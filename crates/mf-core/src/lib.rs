//! mindformers-rs core: device and dtype, errors, config IO, safetensors checkpoints, the model
//! file cache, collective communication between ranks (`comm`), and `init_context` (`context`).
pub mod checkpoint;
pub mod comm;
pub mod config;
pub mod context;
pub mod device;
pub mod error;
pub mod memory;

pub use context::{init_context, Context, ContextConfig, ParallelContextConfig, ParallelMode};
pub use device::{DType, Device};
pub use error::{guard, invalid, MfError, Result};
pub mod hub;
