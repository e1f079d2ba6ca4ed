//! Processors: text to fixed-shape model input tensors, as MindFormers' `GPT2Processor`.
use std::fmt;

use mf_core::{invalid, Result};
use tch::Tensor;

use crate::tokenizer::{EncodeOptions, Padding, Tokenizer};

/// The tensor flavour asked for; all map to libtorch tensors here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnTensors {
    /// `'ms'`, `'pt'` or `'tch'`: a libtorch int32 tensor.
    Tensor,
}

impl std::str::FromStr for ReturnTensors {
    type Err = mf_core::MfError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ms" | "pt" | "tch" => Ok(ReturnTensors::Tensor),
            other => Err(invalid(format!(
                "return_tensors '{other}': expected 'ms', 'pt' or 'tch' (all give a libtorch tensor)"
            ))),
        }
    }
}

/// Text processor for causal LMs: tokenize, pad/truncate to `max_length`, stack as int32.
#[derive(Debug, Clone)]
pub struct GPT2Processor {
    /// The tokenizer used.
    pub tokenizer: Tokenizer,
    /// Every row is padded or truncated to this length.
    pub max_length: usize,
    /// Output tensor kind.
    pub return_tensors: ReturnTensors,
}

/// What a processor returns: `{'text': Tensor[batch, max_length]}`.
#[derive(Debug)]
pub struct ProcessorOutput {
    /// int32 token ids `[batch, max_length]`.
    pub text: Tensor,
}

impl GPT2Processor {
    /// MindFormers' default `max_length`.
    pub const DEFAULT_MAX_LENGTH: usize = 128;

    /// `GPT2Processor(tokenizer=tok, max_length=256, return_tensors='ms')`.
    pub fn new(tokenizer: Tokenizer, max_length: usize, return_tensors: &str) -> Result<Self> {
        if max_length == 0 {
            return Err(invalid("processor max_length must be at least 1"));
        }
        Ok(GPT2Processor {
            tokenizer,
            max_length,
            return_tensors: return_tensors.parse()?,
        })
    }

    /// `GPT2Processor.from_pretrained('gpt2')`: the preset's tokenizer, `max_length` 128.
    pub fn from_pretrained(name_or_dir: &str) -> Result<Self> {
        Self::new(
            crate::gpt2::GPT2Tokenizer::from_pretrained(name_or_dir)?,
            Self::DEFAULT_MAX_LENGTH,
            "ms",
        )
    }

    /// Processes one text into a `[1, max_length]` tensor.
    pub fn call(&self, text: &str) -> Result<ProcessorOutput> {
        self.call_batch(&[text])
    }

    /// Processes a batch into a `[batch, max_length]` tensor.
    pub fn call_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<ProcessorOutput> {
        let enc = self.tokenizer.encode_batch(
            texts,
            &EncodeOptions {
                padding: Padding::MaxLength,
                truncation: true,
                max_length: Some(self.max_length),
                ..Default::default()
            },
        )?;
        let ReturnTensors::Tensor = self.return_tensors;
        Ok(ProcessorOutput {
            text: enc.input_ids_tensor()?.to_kind(tch::Kind::Int),
        })
    }
}

/// Formats like MindSpore's tensor repr: `Tensor(shape=[1, 128], dtype=Int32, value=...)`.
pub fn format_int_tensor(t: &Tensor) -> String {
    let size = t.size();
    let rows: Vec<Vec<i64>> = match size.len() {
        1 => vec![Vec::<i64>::try_from(t.to_kind(tch::Kind::Int64)).unwrap_or_default()],
        _ => Vec::<Vec<i64>>::try_from(t.to_kind(tch::Kind::Int64).reshape([size[0], -1]))
            .unwrap_or_default(),
    };
    let width = rows
        .iter()
        .flatten()
        .map(|v| v.to_string().len())
        .max()
        .unwrap_or(1);
    let fmt_row = |r: &Vec<i64>| -> String {
        let cells = |xs: &[i64]| {
            xs.iter()
                .map(|v| format!("{v:>width$}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if r.len() > 6 {
            format!("[{} ... {}]", cells(&r[..3]), cells(&r[r.len() - 3..]))
        } else {
            format!("[{}]", cells(r))
        }
    };
    let body = rows.iter().map(fmt_row).collect::<Vec<_>>().join(",\n ");
    let kind = match t.kind() {
        tch::Kind::Int => "Int32",
        tch::Kind::Int64 => "Int64",
        _ => "Int",
    };
    let value = if size.len() == 1 {
        body
    } else {
        format!("[{body}]")
    };
    format!("Tensor(shape={size:?}, dtype={kind}, value=\n{value})")
}

impl fmt::Display for ProcessorOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{'text': {}}}", format_int_tensor(&self.text))
    }
}
