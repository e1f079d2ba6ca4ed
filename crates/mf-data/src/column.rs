//! Column values of one record.
use mf_core::{invalid, Result};

/// One column of one record: a 1-D array of integers or floats.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// Integer data (token ids, labels, masks).
    Int(Vec<i64>),
    /// Float data.
    Float(Vec<f32>),
}

impl Column {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Column::Int(v) => v.len(),
            Column::Float(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The integer data, or an error naming the column when it holds floats.
    pub fn as_int(&self, name: &str) -> Result<&[i64]> {
        match self {
            Column::Int(v) => Ok(v),
            Column::Float(_) => Err(invalid(format!(
                "column '{name}' holds floats, an integer column is needed"
            ))),
        }
    }

    /// The column extended to `len` elements with `value`.
    pub fn padded(&self, len: usize, value: f64) -> Column {
        match self {
            Column::Int(v) => {
                let mut v = v.clone();
                v.resize(len.max(v.len()), value as i64);
                Column::Int(v)
            }
            Column::Float(v) => {
                let mut v = v.clone();
                v.resize(len.max(v.len()), value as f32);
                Column::Float(v)
            }
        }
    }

    #[cfg(feature = "tch")]
    pub(crate) fn kind_name(&self) -> &'static str {
        match self {
            Column::Int(_) => "int",
            Column::Float(_) => "float",
        }
    }
}

impl From<Vec<i64>> for Column {
    fn from(v: Vec<i64>) -> Self {
        Column::Int(v)
    }
}

impl From<Vec<i32>> for Column {
    fn from(v: Vec<i32>) -> Self {
        Column::Int(v.into_iter().map(i64::from).collect())
    }
}

impl From<Vec<u32>> for Column {
    fn from(v: Vec<u32>) -> Self {
        Column::Int(v.into_iter().map(i64::from).collect())
    }
}

impl From<Vec<f32>> for Column {
    fn from(v: Vec<f32>) -> Self {
        Column::Float(v)
    }
}

/// One sample: its columns in the dataset's column order.
pub type Record = Vec<Column>;
