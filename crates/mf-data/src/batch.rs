//! Batching: records grouped and stacked into `[batch, len]` tensors, with the data
//! collator's per-batch padding. The one part of the crate that needs libtorch (`tch` feature).
use mf_core::{invalid, Result};

use crate::column::{Column, Record};
use crate::dataset::Dataset;

impl Dataset {
    /// Groups samples into batches of `batch_size`.
    pub fn batch(self, batch_size: usize, drop_remainder: bool) -> Result<BatchedDataset> {
        if batch_size == 0 {
            return Err(invalid("batch_size must be at least 1"));
        }
        Ok(BatchedDataset {
            dataset: self,
            batch_size,
            drop_remainder,
            padding: Vec::new(),
        })
    }
}

/// A batch: each column stacked into a `[batch, len]` tensor.
#[derive(Debug)]
pub struct Batch {
    /// `(column name, tensor)` in dataset column order.
    pub columns: Vec<(String, tch::Tensor)>,
}

impl Batch {
    /// The tensor of a column, or an error listing the columns there are.
    pub fn get(&self, name: &str) -> Result<&tch::Tensor> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                invalid(format!(
                    "the dataset has no column '{name}'; its columns are: {}",
                    self.columns
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// Rows in the batch.
    pub fn size(&self) -> i64 {
        self.columns.first().map_or(0, |(_, t)| t.size()[0])
    }
}

/// `dataset.batch(n, drop_remainder)`.
#[derive(Clone, Debug)]
pub struct BatchedDataset {
    dataset: Dataset,
    batch_size: usize,
    drop_remainder: bool,
    padding: Vec<(String, f64)>,
}

impl BatchedDataset {
    /// The data collator's padding: each named column is padded, per batch, to the longest
    /// row of the batch with its value (`input_ids` with the pad id, `attention_mask` with
    /// 0, `labels` with -100), so rows of different lengths batch together.
    pub fn pad_columns(mut self, padding: &[(&str, f64)]) -> Result<Self> {
        for (name, _) in padding {
            if !self.dataset.columns.iter().any(|c| c == name) {
                return Err(invalid(format!(
                    "cannot pad column '{name}': the dataset's columns are {}",
                    self.dataset.columns.join(", ")
                )));
            }
        }
        self.padding = padding.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        Ok(self)
    }

    /// Samples per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The dataset being batched.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.dataset.len();
        if self.drop_remainder {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// Batch `index` of `epoch`, read directly (no earlier batch is touched).
    pub fn get(&self, epoch: u64, index: usize) -> Result<Batch> {
        let order = self.dataset.order(epoch);
        self.get_in(&order, index)
    }

    /// Batch `index` of a precomputed epoch order.
    pub fn get_in(&self, order: &[usize], index: usize) -> Result<Batch> {
        let start = index * self.batch_size;
        if start >= order.len() {
            return Err(invalid(format!(
                "batch {index} is past the end of the epoch"
            )));
        }
        let end = (start + self.batch_size).min(order.len());
        let records: Vec<Record> = order[start..end]
            .iter()
            .map(|&i| self.dataset.record(i))
            .collect::<Result<_>>()?;
        let mut columns = Vec::with_capacity(self.dataset.columns.len());
        for (c, name) in self.dataset.columns.iter().enumerate() {
            let col: Vec<&Column> = records.iter().map(|r| &r[c]).collect();
            let stacked = match self.padding.iter().find(|(n, _)| n == name) {
                Some((_, value)) => {
                    let longest = col.iter().map(|c| c.len()).max().unwrap_or(0);
                    let padded: Vec<Column> =
                        col.iter().map(|c| c.padded(longest, *value)).collect();
                    stack(&padded.iter().collect::<Vec<_>>(), name, start)?
                }
                None => stack(&col, name, start)?,
            };
            columns.push((name.clone(), stacked));
        }
        Ok(Batch { columns })
    }
}

/// Stacks the same column of several records into a `[rows, len]` tensor.
pub fn stack(rows: &[&Column], name: &str, first_index: usize) -> Result<tch::Tensor> {
    let len = rows.first().map_or(0, |c| c.len());
    for (i, c) in rows.iter().enumerate() {
        if c.len() != len {
            return Err(invalid(format!(
                "column '{name}': record {} has {} elements but record {first_index} has {len}; \
                 records batched together must have equal lengths",
                first_index + i,
                c.len()
            )));
        }
        if c.kind_name() != rows[0].kind_name() {
            return Err(invalid(format!(
                "column '{name}' mixes int and float records"
            )));
        }
    }
    let shape = [rows.len() as i64, len as i64];
    Ok(match rows.first() {
        Some(Column::Float(_)) => {
            let flat: Vec<f32> = rows
                .iter()
                .flat_map(|c| match c {
                    Column::Float(v) => v.clone(),
                    Column::Int(_) => Vec::new(),
                })
                .collect();
            tch::Tensor::from_slice(&flat).reshape(shape)
        }
        _ => {
            let flat: Vec<i64> = rows
                .iter()
                .flat_map(|c| match c {
                    Column::Int(v) => v.clone(),
                    Column::Float(_) => Vec::new(),
                })
                .collect();
            tch::Tensor::from_slice(&flat).reshape(shape)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::GeneratorDataset;

    fn numbers(n: i64) -> Dataset {
        GeneratorDataset::new((0..n).map(|i| vec![i, i + 100]), &["input_ids"]).unwrap()
    }

    #[test]
    fn batches_seek_and_check_shapes() {
        let b = numbers(10).batch(4, false).unwrap();
        assert_eq!(b.num_batches(), 3);
        let last = b.get(0, 2).unwrap();
        assert_eq!(last.size(), 2);
        assert_eq!(
            Vec::<i64>::try_from(last.get("input_ids").unwrap().get(1)).unwrap(),
            [9, 109]
        );
        assert_eq!(numbers(10).batch(4, true).unwrap().num_batches(), 2);
        let err = last.get("labels").unwrap_err().to_string();
        assert!(
            err.contains("no column 'labels'") && err.contains("input_ids"),
            "{err}"
        );

        let ragged = GeneratorDataset::new(vec![vec![1i64, 2], vec![3]], &["input_ids"]).unwrap();
        let err = ragged
            .batch(2, false)
            .unwrap()
            .get(0, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("record 1 has 1 elements but record 0 has 2"),
            "{err}"
        );
        let err = GeneratorDataset::new(
            vec![vec![Column::Int(vec![1]), Column::Int(vec![2])]],
            &["a"],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("record 0 has 2 columns"), "{err}");
    }
}
