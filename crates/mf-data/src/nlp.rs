//! Task datasets from table rows ([`crate::table`]): tokenized records with the labels each
//! head's loss reads, and the data collator's per-batch padding. Labels are `-100` on
//! special tokens and on word pieces after a word's first (NER), start / end token positions
//! over doc-stride windows (QA), as transformers' example scripts build them.
use mf_core::{invalid, Result};
use mf_tokenizers::{EncodeOptions, Tokenizer};
use serde_json::Value;

#[cfg(feature = "tch")]
use crate::batch::BatchedDataset;
use crate::column::Column;
use crate::dataset::Dataset;
use crate::table::{column, list, Row};

/// The label id every loss ignores.
pub const IGNORE_INDEX: i64 = -100;

/// A tokenized task dataset with what training and evaluation need besides the records.
#[derive(Clone, Debug)]
pub struct TaskData {
    /// The records (`input_ids`, `attention_mask`, `token_type_ids`, and the task's labels).
    pub dataset: Dataset,
    /// Label names by id (classification tasks), from `id2label` or from the data.
    pub labels: Vec<String>,
    /// Per-batch padding of each column: `(column, value)`.
    pub padding: Vec<(&'static str, f64)>,
    /// Question answering: per record, which example it is a window of and the character
    /// span of each token in the context (`None` outside it).
    pub qa: Option<QaWindows>,
}

/// The character span in the context of each token of a window (`None` outside it).
pub type ContextOffsets = Vec<Option<(usize, usize)>>;

/// The windows of question-answering examples, for turning predicted spans into text.
#[derive(Clone, Debug, Default)]
pub struct QaWindows {
    /// Per example: its context and its gold answer texts.
    pub examples: Vec<(String, Vec<String>)>,
    /// Per record: its example and the context offsets of its tokens.
    pub windows: Vec<(usize, ContextOffsets)>,
}

impl TaskData {
    /// Batches the records, padding each batch to its longest row.
    #[cfg(feature = "tch")]
    pub fn batch(&self, batch_size: usize, drop_remainder: bool) -> Result<BatchedDataset> {
        self.dataset
            .clone()
            .batch(batch_size, drop_remainder)?
            .pad_columns(&self.padding)
    }
}

fn pad_spec(tok: &Tokenizer, label_pad: Option<&'static str>) -> Result<Vec<(&'static str, f64)>> {
    let pad = tok
        .pad_token_id()
        .ok_or_else(|| invalid("the tokenizer has no pad token; batches cannot be padded"))?;
    let mut v = vec![
        ("input_ids", pad as f64),
        ("attention_mask", 0.0),
        ("token_type_ids", 0.0),
    ];
    if let Some(l) = label_pad {
        v.push((l, IGNORE_INDEX as f64));
    }
    Ok(v)
}

fn text<'a>(row: &'a Row, name: &str, i: usize) -> Result<&'a str> {
    column(row, name, i)?
        .as_str()
        .ok_or_else(|| invalid(format!("row {i}: column '{name}' must be text")))
}

fn ids(v: &[u32]) -> Column {
    Column::Int(v.iter().map(|&x| x as i64).collect())
}

/// Label names from the data: sorted distinct strings (`O` first for tags), or
/// `LABEL_0..=max` for integer labels.
fn labels_from_data(values: &[&Value], tags: bool) -> Result<Vec<String>> {
    if values.iter().all(|v| v.is_i64() || v.is_u64()) {
        let max = values.iter().filter_map(|v| v.as_i64()).max().unwrap_or(0);
        if values.iter().any(|v| v.as_i64().is_some_and(|x| x < 0)) {
            return Err(invalid("labels must not be negative"));
        }
        return Ok((0..=max).map(|i| format!("LABEL_{i}")).collect());
    }
    let mut names: Vec<String> = values
        .iter()
        .map(|v| {
            v.as_str()
                .map(String::from)
                .ok_or_else(|| invalid(format!("label {v} is neither an id nor a name")))
        })
        .collect::<Result<_>>()?;
    names.sort();
    names.dedup();
    if tags {
        if let Some(p) = names.iter().position(|n| n == "O") {
            let o = names.remove(p);
            names.insert(0, o);
        }
    }
    Ok(names)
}

fn label_id(v: &Value, labels: &[String], what: &str, i: usize) -> Result<i64> {
    let id = match v {
        Value::String(s) => labels.iter().position(|l| l == s).ok_or_else(|| {
            invalid(format!(
                "row {i}: {what} '{s}' is not one of the labels {}",
                labels.join(", ")
            ))
        })? as i64,
        v => v
            .as_i64()
            .ok_or_else(|| invalid(format!("row {i}: {what} {v} is neither an id nor a name")))?,
    };
    if id < 0 || id as usize >= labels.len() {
        return Err(invalid(format!(
            "row {i}: {what} {id} is outside the {} labels",
            labels.len()
        )));
    }
    Ok(id)
}

fn encoded(
    tok: &Tokenizer,
    a: &str,
    b: Option<&str>,
    max_length: usize,
) -> Result<mf_tokenizers::EncodedRow> {
    let opts = EncodeOptions {
        truncation: true,
        max_length: Some(max_length),
        ..Default::default()
    };
    let mut r = tok.encode_rows(&[(a, b)], &opts)?;
    Ok(r.remove(0))
}

/// `text_classification`: `text` (and optional `text_pair`) with a `label` column (an id or a
/// name; a list of names or 0/1 floats for multi-label). Records: the encoding and `labels`.
pub fn text_classification(
    rows: &[Row],
    tok: &Tokenizer,
    text_col: &str,
    pair_col: Option<&str>,
    label_col: &str,
    labels: Option<&[String]>,
    max_length: usize,
) -> Result<TaskData> {
    let values: Vec<&Value> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| column(r, label_col, i))
        .collect::<Result<_>>()?;
    let multi = values.iter().all(|v| v.is_array());
    let labels = match labels {
        Some(l) if !l.is_empty() => l.to_vec(),
        _ if multi => {
            let flat: Vec<&Value> = values
                .iter()
                .flat_map(|v| v.as_array().into_iter().flatten())
                .collect();
            labels_from_data(&flat, false)?
        }
        _ => labels_from_data(&values, false)?,
    };
    let mut records = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let a = text(row, text_col, i)?;
        let b = pair_col.map(|c| text(row, c, i)).transpose()?;
        let e = encoded(tok, a, b, max_length)?;
        let label = if multi {
            let mut hot = vec![0f32; labels.len()];
            for v in list(values[i], label_col, i)? {
                hot[label_id(v, &labels, "label", i)? as usize] = 1.0;
            }
            Column::Float(hot)
        } else {
            Column::Int(vec![label_id(values[i], &labels, "label", i)?])
        };
        records.push(vec![
            ids(&e.input_ids),
            ids(&e.attention_mask),
            ids(&e.token_type_ids),
            label,
        ]);
    }
    Ok(TaskData {
        dataset: Dataset::from_records(
            records,
            &["input_ids", "attention_mask", "token_type_ids", "labels"],
        )?,
        labels,
        padding: pad_spec(tok, None)?,
        qa: None,
    })
}

/// `token_classification`: pre-split `tokens` (words) with one tag per word (`ner_tags`,
/// ids or names). Each word's first piece carries its tag, later pieces and special tokens
/// `-100`.
pub fn token_classification(
    rows: &[Row],
    tok: &Tokenizer,
    tokens_col: &str,
    tags_col: &str,
    labels: Option<&[String]>,
    max_length: usize,
) -> Result<TaskData> {
    let mut all_tags = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        all_tags.extend(list(column(r, tags_col, i)?, tags_col, i)?);
    }
    let labels = match labels {
        Some(l) if !l.is_empty() => l.to_vec(),
        _ => labels_from_data(&all_tags, true)?,
    };
    let cls = tok.cls_token_id();
    let sep = tok.sep_token_id();
    let budget = max_length.saturating_sub(cls.is_some() as usize + sep.is_some() as usize);
    let mut records = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let words = list(column(row, tokens_col, i)?, tokens_col, i)?;
        let tags = list(column(row, tags_col, i)?, tags_col, i)?;
        if words.len() != tags.len() {
            return Err(invalid(format!(
                "row {i}: {} words but {} tags",
                words.len(),
                tags.len()
            )));
        }
        let (mut input, mut lab) = (Vec::new(), Vec::new());
        for (w, t) in words.iter().zip(&tags) {
            let w = w
                .as_str()
                .ok_or_else(|| invalid(format!("row {i}: a word is not text")))?;
            let pieces = tok.encode_ids(w)?;
            let id = label_id(t, &labels, "tag", i)?;
            for (k, p) in pieces.iter().enumerate() {
                input.push(*p as i64);
                lab.push(if k == 0 { id } else { IGNORE_INDEX });
            }
        }
        input.truncate(budget);
        lab.truncate(budget);
        if let Some(c) = cls {
            input.insert(0, c as i64);
            lab.insert(0, IGNORE_INDEX);
        }
        if let Some(s) = sep {
            input.push(s as i64);
            lab.push(IGNORE_INDEX);
        }
        let n = input.len();
        records.push(vec![
            Column::Int(input),
            Column::Int(vec![1; n]),
            Column::Int(vec![0; n]),
            Column::Int(lab),
        ]);
    }
    Ok(TaskData {
        dataset: Dataset::from_records(
            records,
            &["input_ids", "attention_mask", "token_type_ids", "labels"],
        )?,
        labels,
        padding: pad_spec(tok, Some("labels"))?,
        qa: None,
    })
}

/// `question_answering`: SQuAD's `question`, `context` and `answers` (`{"text": [...],
/// "answer_start": [...]}`). Long contexts become windows of `max_length` tokens overlapping
/// by `doc_stride`; a window without the (first) answer points at `[CLS]` (0, 0).
pub fn question_answering(
    rows: &[Row],
    tok: &Tokenizer,
    max_length: usize,
    doc_stride: usize,
) -> Result<TaskData> {
    let mut records = Vec::new();
    let mut qa = QaWindows::default();
    for (i, row) in rows.iter().enumerate() {
        let q = text(row, "question", i)?;
        let ctx = text(row, "context", i)?;
        let ans = column(row, "answers", i)?;
        let texts: Vec<String> = list(&ans["text"], "answers.text", i)?
            .iter()
            .map(|t| {
                t.as_str()
                    .map(String::from)
                    .ok_or_else(|| invalid(format!("row {i}: an answer is not text")))
            })
            .collect::<Result<_>>()?;
        let starts: Vec<usize> = list(&ans["answer_start"], "answers.answer_start", i)?
            .iter()
            .map(|s| {
                s.as_u64()
                    .map(|s| s as usize)
                    .ok_or_else(|| invalid(format!("row {i}: answer_start is not a position")))
            })
            .collect::<Result<_>>()?;
        if texts.is_empty() || texts.len() != starts.len() {
            return Err(invalid(format!(
                "row {i}: answers needs as many texts as answer_start values (at least one)"
            )));
        }
        // Character span of the first answer, in chars (offsets are char offsets).
        let a0 = starts[0];
        let a1 = a0 + texts[0].chars().count();
        if a1 > ctx.chars().count() {
            return Err(invalid(format!(
                "row {i}: the answer's span ends past the context"
            )));
        }
        for w in tok.encode_windows(q, ctx, max_length, doc_stride)? {
            let in_ctx: ContextOffsets = (0..w.input_ids.len())
                .map(|k| (w.sequence_ids[k] == Some(1)).then_some(w.offsets[k]))
                .collect();
            let toks: Vec<usize> = (0..in_ctx.len()).filter(|&k| in_ctx[k].is_some()).collect();
            let first = toks.first().and_then(|&k| in_ctx[k]).map_or(0, |o| o.0);
            let last = toks.last().and_then(|&k| in_ctx[k]).map_or(0, |o| o.1);
            let (s, e) = if a0 >= first && a1 <= last {
                let s = toks
                    .iter()
                    .copied()
                    .find(|&k| in_ctx[k].is_some_and(|o| o.1 > a0))
                    .unwrap_or(0);
                let e = toks
                    .iter()
                    .copied()
                    .rev()
                    .find(|&k| in_ctx[k].is_some_and(|o| o.0 < a1))
                    .unwrap_or(0);
                (s as i64, e as i64)
            } else {
                (0, 0)
            };
            records.push(vec![
                ids(&w.input_ids),
                ids(&w.attention_mask),
                ids(&w.token_type_ids),
                Column::Int(vec![s]),
                Column::Int(vec![e]),
            ]);
            qa.windows.push((qa.examples.len(), in_ctx));
        }
        qa.examples.push((ctx.to_string(), texts));
    }
    Ok(TaskData {
        dataset: Dataset::from_records(
            records,
            &[
                "input_ids",
                "attention_mask",
                "token_type_ids",
                "start_positions",
                "end_positions",
            ],
        )?,
        labels: Vec::new(),
        padding: pad_spec(tok, None)?,
        qa: Some(qa),
    })
}

/// `fill_mask` (masked-LM pretraining): texts encoded with their `special_tokens_mask`; the
/// 15% / 80-10-10 masking is drawn per batch by the trainer.
pub fn masked_lm(
    rows: &[Row],
    tok: &Tokenizer,
    text_col: &str,
    max_length: usize,
) -> Result<TaskData> {
    if tok.mask_token_id().is_none() {
        return Err(invalid(
            "masked-LM training needs a tokenizer with a mask token",
        ));
    }
    let mut records = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let e = encoded(tok, text(row, text_col, i)?, None, max_length)?;
        records.push(vec![
            ids(&e.input_ids),
            ids(&e.attention_mask),
            ids(&e.token_type_ids),
            ids(&e.special_tokens_mask),
        ]);
    }
    let mut padding = pad_spec(tok, None)?;
    padding.push(("special_tokens_mask", 1.0));
    Ok(TaskData {
        dataset: Dataset::from_records(
            records,
            &[
                "input_ids",
                "attention_mask",
                "token_type_ids",
                "special_tokens_mask",
            ],
        )?,
        labels: Vec::new(),
        padding,
        qa: None,
    })
}
