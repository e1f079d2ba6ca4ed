//! Tokenizers and processors: `AutoTokenizer`, `GPT2Tokenizer`, `BertTokenizer`, `GPT2Processor`,
//! `AutoProcessor`, with Hugging Face semantics for padding, truncation and special tokens.
//!
//! The tokenizers need no libtorch; the processors and the encodings' `*_tensor` methods, which
//! return tensors, are the `tch` feature (the `mindformers` crate turns it on).
pub mod auto;
pub mod bert;
pub mod encoding;
pub mod gpt2;
#[cfg(feature = "tch")]
pub mod processor;
pub mod tokenizer;

#[cfg(feature = "tch")]
pub use auto::AutoProcessor;
pub use auto::AutoTokenizer;
pub use bert::BertTokenizer;
pub use encoding::BatchEncoding;
pub use gpt2::GPT2Tokenizer;
#[cfg(feature = "tch")]
pub use processor::{GPT2Processor, ProcessorOutput, ReturnTensors};
pub use tokenizer::{EncodeOptions, EncodedRow, Padding, PaddingSide, Tokenizer};
