//! Tokenizers and processors: `AutoTokenizer`, `GPT2Tokenizer`, `BertTokenizer`, `GPT2Processor`,
//! `AutoProcessor`, with Hugging Face semantics for padding, truncation and special tokens.
pub mod auto;
pub mod bert;
pub mod encoding;
pub mod gpt2;
pub mod processor;
pub mod tokenizer;

pub use auto::{AutoProcessor, AutoTokenizer};
pub use bert::BertTokenizer;
pub use encoding::BatchEncoding;
pub use gpt2::GPT2Tokenizer;
pub use processor::{GPT2Processor, ProcessorOutput, ReturnTensors};
pub use tokenizer::{EncodeOptions, EncodedRow, Padding, PaddingSide, Tokenizer};
