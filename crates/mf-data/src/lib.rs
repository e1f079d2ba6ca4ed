//! Datasets as MindSpore users know them: records with named columns, built from a generator,
//! then `.shuffle`, `.map`, `.repeat`, `.skip`/`.take`, `.shard` and `.batch`.
//!
//! A dataset is a random-access source plus a plan of sample indices, so its order is
//! deterministic for a seed and resuming at a sample offset jumps there without reading the
//! samples before it.
//!
//! Without the `tch` feature (on by default) the readers (JSONL/CSV/Parquet tables, corpora,
//! token shards), the task encoders and the record pipeline build with no libtorch; batching
//! into tensors is the `tch` feature.
#[cfg(feature = "tch")]
pub mod batch;
pub mod column;
pub mod corpus;
pub mod dataset;
pub mod nlp;
pub mod shards;
pub mod table;

#[cfg(feature = "tch")]
pub use batch::{Batch, BatchedDataset};
pub use column::{Column, Record};
pub use corpus::packed_dataset;
pub use dataset::{Dataset, GeneratorDataset, Source};
pub use nlp::{QaWindows, TaskData};
