//! `Dataset`: a materialised source of records plus a plan of operations on sample indices.
use std::sync::Arc;

use mf_core::{invalid, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::column::{Column, Record};

type MapFn = Arc<dyn Fn(Record) -> Result<Record> + Send + Sync>;

/// Random-access storage of records (in memory, or memory-mapped token shards).
pub trait Source: Send + Sync {
    /// Number of records.
    fn len(&self) -> usize;
    /// Record `i` (`i < len()`).
    fn get(&self, i: usize) -> Result<Record>;
    /// Whether there are no records.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Source for Vec<Record> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn get(&self, i: usize) -> Result<Record> {
        self.as_slice().get(i).cloned().ok_or_else(|| {
            invalid(format!(
                "record index {i} is out of range ({} records)",
                Vec::len(self)
            ))
        })
    }
}

#[derive(Clone)]
enum Op {
    Shuffle { buffer: usize, seed: u64 },
    Skip(usize),
    Take(usize),
    Shard { num: usize, id: usize },
    Repeat(usize),
    Map(MapFn),
}

/// Records with named columns and a deterministic, seekable sample order.
#[derive(Clone)]
pub struct Dataset {
    rows: Arc<dyn Source>,
    pub(crate) columns: Vec<String>,
    ops: Vec<Op>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("columns", &self.columns)
            .field("len", &self.len())
            .finish()
    }
}

/// Things a generator may yield: a whole record, or the single column of a one-column dataset.
pub trait IntoRecord {
    /// The record.
    fn into_record(self) -> Record;
}

impl IntoRecord for Record {
    fn into_record(self) -> Record {
        self
    }
}

macro_rules! one_column {
    ($($t:ty),*) => {$(
        impl IntoRecord for $t {
            fn into_record(self) -> Record {
                vec![Column::from(self)]
            }
        }
    )*};
}
one_column!(Vec<i32>, Vec<i64>, Vec<u32>, Vec<f32>);

/// `GeneratorDataset(generator, column_names)`: collects a finite generator's records.
pub struct GeneratorDataset;

impl GeneratorDataset {
    /// Builds a dataset from every record `generator` yields.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<I, R>(generator: I, column_names: &[&str]) -> Result<Dataset>
    where
        I: IntoIterator<Item = R>,
        R: IntoRecord,
    {
        Dataset::from_records(
            generator.into_iter().map(IntoRecord::into_record).collect(),
            column_names,
        )
    }
}

/// A mixing of (seed, epoch) so every epoch reshuffles differently but reproducibly.
fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// MindSpore's buffered shuffle: fill a buffer, emit a random element, refill from the input.
fn buffered_shuffle(input: Vec<usize>, buffer: usize, seed: u64) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    if buffer >= input.len() {
        let mut v = input;
        v.shuffle(&mut rng);
        return v;
    }
    let mut out = Vec::with_capacity(input.len());
    let mut buf: Vec<usize> = Vec::with_capacity(buffer);
    for x in input {
        if buf.len() < buffer {
            buf.push(x);
            continue;
        }
        let j = rand::Rng::random_range(&mut rng, 0..buf.len());
        out.push(std::mem::replace(&mut buf[j], x));
    }
    buf.shuffle(&mut rng);
    out.extend(buf);
    out
}

/// A seeded permutation of a sample order, different for every epoch.
pub fn permute(order: Vec<usize>, seed: u64, epoch: u64) -> Vec<usize> {
    buffered_shuffle(order, usize::MAX, epoch_seed(seed, epoch))
}

impl Dataset {
    /// A dataset over records whose columns are named `column_names`.
    pub fn from_records(rows: Vec<Record>, column_names: &[&str]) -> Result<Self> {
        if column_names.is_empty() {
            return Err(invalid("a dataset needs at least one column name"));
        }
        for (i, r) in rows.iter().enumerate() {
            if r.len() != column_names.len() {
                return Err(invalid(format!(
                    "record {i} has {} columns but column_names has {} ({})",
                    r.len(),
                    column_names.len(),
                    column_names.join(", ")
                )));
            }
        }
        Ok(Dataset {
            rows: Arc::new(rows),
            columns: column_names.iter().map(|s| s.to_string()).collect(),
            ops: Vec::new(),
        })
    }

    /// A dataset over any record source (e.g. memory-mapped token shards).
    pub fn from_source(source: Arc<dyn Source>, column_names: &[&str]) -> Result<Self> {
        if column_names.is_empty() {
            return Err(invalid("a dataset needs at least one column name"));
        }
        Ok(Dataset {
            rows: source,
            columns: column_names.iter().map(|s| s.to_string()).collect(),
            ops: Vec::new(),
        })
    }

    /// Column names, in record order.
    pub fn column_names(&self) -> &[String] {
        &self.columns
    }

    fn with(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    /// Shuffles with a `buffer_size` window (>= len: a full permutation), reshuffling each epoch.
    pub fn shuffle(self, buffer_size: usize, seed: u64) -> Result<Self> {
        if buffer_size < 2 {
            return Err(invalid("shuffle buffer_size must be at least 2"));
        }
        Ok(self.with(Op::Shuffle {
            buffer: buffer_size,
            seed,
        }))
    }

    /// Drops the first `n` samples.
    pub fn skip(self, n: usize) -> Self {
        self.with(Op::Skip(n))
    }

    /// Keeps the first `n` samples.
    pub fn take(self, n: usize) -> Self {
        self.with(Op::Take(n))
    }

    /// Keeps every `num_shards`-th sample starting at `shard_id` (one data-parallel rank's part).
    pub fn shard(self, num_shards: usize, shard_id: usize) -> Result<Self> {
        if num_shards == 0 || shard_id >= num_shards {
            return Err(invalid(format!(
                "shard {shard_id} of {num_shards} does not exist"
            )));
        }
        Ok(self.with(Op::Shard {
            num: num_shards,
            id: shard_id,
        }))
    }

    /// Repeats the samples `count` times (shuffles before it reshuffle per repetition).
    pub fn repeat(self, count: usize) -> Result<Self> {
        if count == 0 {
            return Err(invalid("repeat count must be at least 1"));
        }
        Ok(self.with(Op::Repeat(count)))
    }

    /// Transforms every record (same column layout).
    pub fn map(self, f: impl Fn(Record) -> Result<Record> + Send + Sync + 'static) -> Self {
        self.with(Op::Map(Arc::new(f)))
    }

    /// Sample indices into the source, in order, for `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        self.order_of(&self.ops, epoch)
    }

    fn order_of(&self, ops: &[Op], epoch: u64) -> Vec<usize> {
        let Some((last, before)) = ops.split_last() else {
            return (0..self.rows.len()).collect();
        };
        if let Op::Repeat(n) = last {
            return (0..*n as u64)
                .flat_map(|r| self.order_of(before, epoch.wrapping_mul(1_000_003).wrapping_add(r)))
                .collect();
        }
        let input = self.order_of(before, epoch);
        match last {
            Op::Shuffle { buffer, seed } => {
                buffered_shuffle(input, *buffer, epoch_seed(*seed, epoch))
            }
            Op::Skip(n) => input.into_iter().skip(*n).collect(),
            Op::Take(n) => input.into_iter().take(*n).collect(),
            Op::Shard { num, id } => input.into_iter().skip(*id).step_by(*num).collect(),
            Op::Repeat(_) | Op::Map(_) => input,
        }
    }

    /// Number of samples in one epoch.
    pub fn len(&self) -> usize {
        self.order(0).len()
    }

    /// Whether an epoch has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record at source index `idx`, with the maps applied.
    pub fn record(&self, idx: usize) -> Result<Record> {
        let mut r = self.rows.get(idx)?;
        for op in &self.ops {
            if let Op::Map(f) = op {
                r = f(r)?;
                if r.len() != self.columns.len() {
                    return Err(invalid(format!(
                        "map returned {} columns for record {idx}, expected {}",
                        r.len(),
                        self.columns.len()
                    )));
                }
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(n: i64) -> Dataset {
        GeneratorDataset::new((0..n).map(|i| vec![i, i + 100]), &["input_ids"]).unwrap()
    }

    fn firsts(ds: &Dataset, epoch: u64) -> Vec<i64> {
        ds.order(epoch)
            .iter()
            .map(|&i| ds.record(i).unwrap()[0].as_int("x").unwrap()[0])
            .collect()
    }

    #[test]
    fn ops_compose_deterministically() {
        let ds = numbers(10);
        assert_eq!(firsts(&ds.clone().skip(2).take(3), 0), [2, 3, 4]);
        assert_eq!(firsts(&ds.clone().shard(3, 1).unwrap(), 0), [1, 4, 7]);
        assert_eq!(firsts(&ds.clone().repeat(2).unwrap(), 0).len(), 20);
        let sh = ds.clone().shuffle(100, 7).unwrap();
        let (a, b) = (firsts(&sh, 0), firsts(&sh, 1));
        assert_eq!(a, firsts(&sh, 0), "same seed and epoch, same order");
        assert_ne!(a, b, "each epoch reshuffles");
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let windowed = firsts(&ds.clone().shuffle(3, 7).unwrap(), 0);
        assert_ne!(windowed, (0..10).collect::<Vec<_>>());
        let mapped = ds.map(|mut r| {
            if let Column::Int(v) = &mut r[0] {
                v[0] *= 10;
            }
            Ok(r)
        });
        assert_eq!(firsts(&mapped, 0)[..3], [0, 10, 20]);
    }
}
