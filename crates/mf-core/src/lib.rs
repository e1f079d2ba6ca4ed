//! mindformers-rs core: device and dtype, errors, config IO, safetensors checkpoints, the model
//! file cache, and collective communication between ranks (`comm`).
pub mod checkpoint;
pub mod comm;
pub mod config;
pub mod device;
pub mod error;

pub use device::{DType, Device};
pub use error::{invalid, MfError, Result};
pub mod hub;
