//! Datasets as MindSpore users know them: records with named columns, built from a generator,
//! then `.shuffle`, `.map`, `.repeat`, `.skip`/`.take`, `.shard` and `.batch`.
//!
//! A dataset is a random-access source plus a plan of sample indices, so its order is
//! deterministic for a seed and resuming at a sample offset jumps there without reading the
//! samples before it.
pub mod column;
pub mod corpus;
pub mod dataset;
pub mod nlp;
pub mod shards;
pub mod table;

pub use column::{Column, Record};
pub use corpus::packed_dataset;
pub use dataset::{Batch, BatchedDataset, Dataset, GeneratorDataset, Source};
pub use nlp::{QaWindows, TaskData};
