//! The result of tokenizing: ids, token type ids and attention mask, per text.
use std::fmt;

use serde::Serialize;

/// Tokenizer output for one text or a batch, printed like the Python dict users know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchEncoding {
    /// Token ids, one row per text.
    pub input_ids: Vec<Vec<u32>>,
    /// Segment ids (all zero for single-segment inputs).
    pub token_type_ids: Vec<Vec<u32>>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
    /// Whether the input was a batch (controls printing and [`BatchEncoding::row`]).
    #[serde(skip)]
    pub batched: bool,
}

/// One text's encoding, serializable as `{"input_ids": [...], ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Encoding<'a> {
    /// Token ids.
    pub input_ids: &'a [u32],
    /// Segment ids.
    pub token_type_ids: &'a [u32],
    /// Attention mask.
    pub attention_mask: &'a [u32],
}

impl BatchEncoding {
    /// The ids, segments and masks of tokenized rows, as a batch.
    pub fn from_rows(rows: &[crate::tokenizer::EncodedRow]) -> Self {
        BatchEncoding {
            input_ids: rows.iter().map(|r| r.input_ids.clone()).collect(),
            token_type_ids: rows.iter().map(|r| r.token_type_ids.clone()).collect(),
            attention_mask: rows.iter().map(|r| r.attention_mask.clone()).collect(),
            batched: true,
        }
    }

    /// Number of texts.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether there are no texts.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// The encoding of text `i`.
    pub fn row(&self, i: usize) -> Encoding<'_> {
        Encoding {
            input_ids: &self.input_ids[i],
            token_type_ids: &self.token_type_ids[i],
            attention_mask: &self.attention_mask[i],
        }
    }

    /// Ids as an int64 tensor `[batch, len]`; rows must have equal length (pad first).
    #[cfg(feature = "tch")]
    pub fn input_ids_tensor(&self) -> mf_core::Result<tch::Tensor> {
        rows_to_tensor(&self.input_ids, "input_ids")
    }

    /// The attention mask as an int64 tensor `[batch, len]`.
    #[cfg(feature = "tch")]
    pub fn attention_mask_tensor(&self) -> mf_core::Result<tch::Tensor> {
        rows_to_tensor(&self.attention_mask, "attention_mask")
    }

    /// The segment ids as an int64 tensor `[batch, len]`.
    #[cfg(feature = "tch")]
    pub fn token_type_ids_tensor(&self) -> mf_core::Result<tch::Tensor> {
        rows_to_tensor(&self.token_type_ids, "token_type_ids")
    }
}

/// Stacks equal-length rows into an int64 tensor.
#[cfg(feature = "tch")]
pub fn rows_to_tensor(rows: &[Vec<u32>], what: &str) -> mf_core::Result<tch::Tensor> {
    let width = rows.first().map_or(0, |r| r.len());
    if rows.iter().any(|r| r.len() != width) {
        return Err(mf_core::invalid(format!(
            "{what} rows have different lengths; encode with padding to make a tensor"
        )));
    }
    let flat: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
    Ok(tch::Tensor::from_slice(&flat).reshape([rows.len() as i64, width as i64]))
}

fn write_list(f: &mut fmt::Formatter<'_>, v: &[u32]) -> fmt::Result {
    write!(f, "[")?;
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        write!(f, "{x}")?;
    }
    write!(f, "]")
}

impl fmt::Display for BatchEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields = [
            ("input_ids", &self.input_ids),
            ("token_type_ids", &self.token_type_ids),
            ("attention_mask", &self.attention_mask),
        ];
        write!(f, "{{")?;
        for (k, (name, rows)) in fields.iter().enumerate() {
            if k > 0 {
                write!(f, ", ")?;
            }
            write!(f, "'{name}': ")?;
            if self.batched {
                write!(f, "[")?;
                for (i, r) in rows.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write_list(f, r)?;
                }
                write!(f, "]")?;
            } else {
                write_list(f, rows.first().map_or(&[][..], |r| r))?;
            }
        }
        write!(f, "}}")
    }
}
