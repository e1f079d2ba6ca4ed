//! Text corpora: plain text or JSONL files, tokenized and packed into `seq_length + 1` windows
//! (the causal LM training sample: inputs are the first `seq_length`, labels the last).
use std::path::Path;

use mf_core::{invalid, MfError, Result};
use mf_tokenizers::Tokenizer;

use crate::column::Column;
use crate::dataset::Dataset;

/// Documents of one file: a `.jsonl` file's `text` fields, or a text file's non-empty lines.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| MfError::io(path, e))?;
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let mut docs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if is_jsonl {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                invalid(format!(
                    "{}:{}: not a JSON object: {e}",
                    path.display(),
                    n + 1
                ))
            })?;
            let t = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                invalid(format!(
                    "{}:{}: record has no string field 'text'",
                    path.display(),
                    n + 1
                ))
            })?;
            docs.push(t.to_string());
        } else {
            docs.push(line.to_string());
        }
    }
    Ok(docs)
}

/// Tokenizes every document of `paths` and concatenates them, each followed by the eos token;
/// `progress` is called after each file with its path and the tokens so far.
pub fn token_stream<P: AsRef<Path>>(
    paths: &[P],
    tokenizer: &Tokenizer,
    mut progress: impl FnMut(&Path, usize),
) -> Result<Vec<u32>> {
    let eos = tokenizer
        .eos_token_id()
        .ok_or_else(|| invalid("the tokenizer has no eos token to separate documents"))?;
    let mut stream = Vec::new();
    for path in paths {
        let path = path.as_ref();
        for doc in read_documents(path)? {
            stream.extend(tokenizer.encode_ids(&doc)?);
            stream.push(eos);
        }
        progress(path, stream.len());
    }
    Ok(stream)
}

/// Number of whole `seq_length + 1` windows in `tokens` tokens, or an error if there are none.
pub fn window_count(tokens: usize, seq_length: usize) -> Result<usize> {
    if seq_length == 0 {
        return Err(invalid("seq_length must be at least 1"));
    }
    let window = seq_length + 1;
    if tokens < window {
        return Err(invalid(format!(
            "the corpus has {tokens} tokens, fewer than seq_length + 1 = {window}; add text or lower seq_length"
        )));
    }
    Ok(tokens / window)
}

/// Tokenizes every document (each followed by the eos token), concatenates them and cuts the
/// stream into non-overlapping windows of `seq_length + 1` tokens in an `input_ids` column.
pub fn packed_dataset(
    paths: &[&Path],
    tokenizer: &Tokenizer,
    seq_length: usize,
) -> Result<Dataset> {
    let stream = token_stream(paths, tokenizer, |_, _| {})?;
    let windows = window_count(stream.len(), seq_length)?;
    let rows = stream[..windows * (seq_length + 1)]
        .chunks_exact(seq_length + 1)
        .map(|c| vec![Column::Int(c.iter().map(|&t| i64::from(t)).collect())])
        .collect();
    Dataset::from_records(rows, &["input_ids"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_text_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("a.txt");
        std::fs::write(&txt, "hello!\n\nhello!\n").unwrap();
        let jsonl = dir.path().join("b.jsonl");
        std::fs::write(&jsonl, "{\"text\": \"hello!\"}\n").unwrap();
        let tok = mf_tokenizers::GPT2Tokenizer::bundled().unwrap();
        let ds = packed_dataset(&[txt.as_path(), jsonl.as_path()], &tok, 2).unwrap();
        // "hello!" = [31373, 0] + eos, three times: 9 tokens, three windows of 3.
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.record(0).unwrap()[0], Column::Int(vec![31373, 0, 50256]));
        let err = packed_dataset(&[txt.as_path()], &tok, 100)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fewer than seq_length + 1"), "{err}");
        std::fs::write(&jsonl, "{\"body\": 1}\n").unwrap();
        let err = packed_dataset(&[jsonl.as_path()], &tok, 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.jsonl:1: record has no string field 'text'"),
            "{err}"
        );
    }
}
