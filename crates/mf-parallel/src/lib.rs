//! The parallel runtime: one training step of a causal LM spread over a device mesh, and
//! data parallelism over full replicas for any other model.
//!
//! - [`config`]: `set_parallel_config` / `set_recompute_config` arguments (MindFormers' names).
//! - [`engine`]: a rank's [`engine::RankEngine`]: data, optimizer (ZeRO-1), tensor, sequence and
//!   pipeline parallelism, micro-batch interleave and recompute, over any
//!   [`mf_core::comm::Communicator`].
//! - [`schedule`]: the 1F1B pipeline schedule as a plain function.
//! - [`segment`]: per-segment backward, the mechanism behind every custom backward here.
//! - [`async_comm`]: a communicator on its own thread, so communication overlaps compute.
//! - [`replica`]: data parallelism (and ZeRO-1) over full replicas, for models without a
//!   [`mf_models::parallel::ParallelLM`] (task heads).
pub mod async_comm;
pub mod config;
pub mod engine;
pub mod optim;
pub mod replica;
pub mod schedule;
pub mod segment;

pub use config::{ParallelConfig, RecomputeConfig};
pub use engine::{EngineOptions, RankEngine};
pub use replica::{ReplicaOptions, ReplicaStep};
