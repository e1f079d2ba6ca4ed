//! Pre-tokenized corpora: `mf data prepare` writes token shards (little-endian u32, whole
//! `seq_length + 1` windows) and an `index.json`; training memory-maps them, so sample `i` is
//! read directly, without touching the samples before it.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use mf_core::{invalid, MfError, Result};
use mf_tokenizers::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::column::{Column, Record};
use crate::corpus::{token_stream, window_count};
use crate::dataset::{Dataset, Source};

/// The index file's name.
pub const INDEX: &str = "index.json";
const FORMAT: &str = "mf-tokens-v1";

/// One shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the directory.
    pub file: String,
    /// Tokens it holds (a multiple of `seq_length + 1`).
    pub tokens: usize,
}

/// `index.json`: what the shards hold and how they were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// Format tag.
    pub format: String,
    /// Tokens per sample minus one (samples hold `seq_length + 1` tokens).
    pub seq_length: usize,
    /// Tokenizer name or directory used.
    pub tokenizer: String,
    /// Tokenizer vocabulary size (ids are below it).
    pub vocab_size: usize,
    /// Shard files in order.
    pub shards: Vec<ShardEntry>,
    /// Tokens written in all.
    pub total_tokens: usize,
}

/// Tokenizes `inputs` (text or JSONL), packs `seq_length + 1` windows and writes them as shards
/// of at most `shard_windows` windows into `output` (through a temp directory and a rename).
/// `progress` is called after each input file with its path and the tokens so far.
pub fn prepare(
    inputs: &[PathBuf],
    tokenizer: &Tokenizer,
    tokenizer_name: &str,
    seq_length: usize,
    shard_windows: usize,
    output: &Path,
    mut progress: impl FnMut(&Path, usize),
) -> Result<ShardIndex> {
    if shard_windows == 0 {
        return Err(invalid("shard size must be at least 1 sample"));
    }
    if inputs.is_empty() {
        return Err(invalid("no input files given"));
    }
    let stream = token_stream(inputs, tokenizer, &mut progress)?;
    let window = seq_length + 1;
    let windows = window_count(stream.len(), seq_length)?;
    let parent = output.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| MfError::io(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        output
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("data"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| MfError::io(&tmp, e))?;
    let mut shards = Vec::new();
    for (n, chunk) in stream[..windows * window]
        .chunks(shard_windows * window)
        .enumerate()
    {
        let file = format!("tokens_{n:05}.bin");
        let bytes: Vec<u8> = chunk.iter().flat_map(|t| t.to_le_bytes()).collect();
        let path = tmp.join(&file);
        std::fs::write(&path, bytes).map_err(|e| MfError::io(&path, e))?;
        shards.push(ShardEntry {
            file,
            tokens: chunk.len(),
        });
    }
    let index = ShardIndex {
        format: FORMAT.into(),
        seq_length,
        tokenizer: tokenizer_name.into(),
        vocab_size: tokenizer.vocab_size(),
        total_tokens: windows * window,
        shards,
    };
    mf_core::config::write_json(tmp.join(INDEX), &index)?;
    if output.exists() {
        std::fs::remove_dir_all(output).map_err(|e| MfError::io(output, e))?;
    }
    std::fs::rename(&tmp, output).map_err(|e| MfError::io(output, e))?;
    Ok(index)
}

struct TokenShards {
    maps: Vec<Mmap>,
    /// Cumulative window counts: shard `k` holds windows `starts[k]..starts[k + 1]`.
    starts: Vec<usize>,
    window: usize,
}

impl Source for TokenShards {
    fn len(&self) -> usize {
        *self.starts.last().unwrap_or(&0)
    }

    fn get(&self, i: usize) -> Result<Record> {
        if i >= self.len() {
            return Err(invalid(format!(
                "sample {i} is out of range ({} samples)",
                self.len()
            )));
        }
        let k = self.starts.partition_point(|&s| s <= i) - 1;
        let off = (i - self.starts[k]) * self.window * 4;
        let bytes = &self.maps[k][off..off + self.window * 4];
        let ids = bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
            .collect();
        Ok(vec![Column::Int(ids)])
    }
}

/// Opens a directory written by [`prepare`] as a dataset with an `input_ids` column.
pub fn open(dir: &Path) -> Result<Dataset> {
    let index_path = dir.join(INDEX);
    if !index_path.is_file() {
        return Err(MfError::NotFound(format!(
            "{}: no {INDEX}; make the dataset with `mf data prepare --tokenizer NAME --seq-length N INPUT... --output {}`",
            dir.display(),
            dir.display()
        )));
    }
    let index: ShardIndex = mf_core::config::read_json(&index_path)?;
    if index.format != FORMAT {
        return Err(MfError::config(
            index_path.display(),
            format!("format '{}' is not {FORMAT}", index.format),
        ));
    }
    let window = index.seq_length + 1;
    let mut maps = Vec::new();
    let mut starts = vec![0];
    for s in &index.shards {
        let path = dir.join(&s.file);
        let file = std::fs::File::open(&path).map_err(|e| MfError::io(&path, e))?;
        // SAFETY: shards are written once (temp dir + rename) and only read afterwards.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| MfError::io(&path, e))?;
        if map.len() != s.tokens * 4 || s.tokens % window != 0 {
            return Err(MfError::checkpoint(
                path.display(),
                format!(
                    "corrupt shard: {} bytes on disk, index says {} tokens of 4 bytes in windows of {window}; re-run mf data prepare",
                    map.len(),
                    s.tokens
                ),
            ));
        }
        starts.push(starts.last().copied().unwrap_or(0) + s.tokens / window);
        maps.push(map);
    }
    Dataset::from_source(
        Arc::new(TokenShards {
            maps,
            starts,
            window,
        }),
        &["input_ids"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_then_open_reads_each_window_directly() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("c.txt");
        std::fs::write(&text, "hello!\nI love Beijing, because\nhello!\n").unwrap();
        let tok = mf_tokenizers::GPT2Tokenizer::bundled().unwrap();
        let out = dir.path().join("prepared");
        let mut seen = Vec::new();
        let index = prepare(
            std::slice::from_ref(&text),
            &tok,
            "gpt2",
            2,
            2,
            &out,
            |p, n| seen.push((p.to_path_buf(), n)),
        )
        .unwrap();
        // 3 + 6 + 3 = 12 tokens: four windows of 3, two shards of two windows.
        assert_eq!((index.total_tokens, index.shards.len()), (12, 2));
        assert_eq!(seen, [(text, 12)]);
        let ds = open(&out).unwrap();
        assert_eq!(ds.len(), 4);
        assert_eq!(ds.record(0).unwrap()[0], Column::Int(vec![31373, 0, 50256]));
        assert_eq!(ds.record(3).unwrap()[0], Column::Int(vec![31373, 0, 50256]));
        assert_eq!(ds.record(1).unwrap()[0], Column::Int(vec![40, 1842, 11618]));

        // A truncated shard is named.
        let shard = out.join("tokens_00001.bin");
        let bytes = std::fs::read(&shard).unwrap();
        std::fs::write(&shard, &bytes[..bytes.len() - 3]).unwrap();
        let err = open(&out).unwrap_err().to_string();
        assert!(
            err.contains("tokens_00001.bin") && err.contains("corrupt shard"),
            "{err}"
        );
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("mf data prepare"), "{err}");
    }
}
