//! `question_answering`: the answer span of a question in a context, with transformers'
//! `QuestionAnsweringPipeline` semantics: `[CLS] question [SEP] context [SEP]` windows of
//! `max_seq_len` tokens overlapping by `doc_stride`, start × end probabilities over context
//! tokens (answers of at most `max_answer_len` tokens), spans widened to whole words, the
//! `top_k` best over every window.
use mf_core::{invalid, Result};
use mf_models::{Task, TaskModel};
use mf_tokenizers::{EncodedRow, Tokenizer};
use serde_json::{json, Value};

use crate::task::{
    forward_rows, require_head, to_vec_f32, CallOptions, OutputFormat, Pipeline, PipelineInput,
};

/// One answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// start × end probability.
    pub score: f64,
    /// First character in the context.
    pub start: usize,
    /// One past the last character.
    pub end: usize,
    /// The context's text between them.
    pub answer: String,
}

impl Answer {
    /// As the chosen library returns it (MindFormers names the answer `text`).
    pub fn to_json(&self, format: OutputFormat) -> Value {
        match format {
            OutputFormat::Hf => {
                json!({"score": self.score, "start": self.start, "end": self.end, "answer": self.answer})
            }
            OutputFormat::MindFormers => {
                json!({"text": self.answer, "score": self.score, "start": self.start, "end": self.end})
            }
        }
    }
}

/// Question-answering settings (HF's defaults).
#[derive(Debug, Clone, Copy)]
pub struct QaOptions {
    /// Answers to return.
    pub top_k: usize,
    /// Tokens of overlap between windows; default min(max_seq_len / 2, 128).
    pub doc_stride: Option<usize>,
    /// Longest answer in tokens.
    pub max_answer_len: usize,
    /// Tokens per window; default min(model_max_length, 384).
    pub max_seq_len: Option<usize>,
    /// Also consider the empty answer.
    pub handle_impossible_answer: bool,
}

impl Default for QaOptions {
    fn default() -> Self {
        QaOptions {
            top_k: 1,
            doc_stride: None,
            max_answer_len: 15,
            max_seq_len: None,
            handle_impossible_answer: false,
        }
    }
}

/// A question-answering model with its tokenizer.
pub struct QuestionAnsweringPipeline {
    model: Box<dyn TaskModel>,
    tokenizer: Tokenizer,
}

fn char_slice(s: &str, start: usize, end: usize) -> String {
    s.chars()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect()
}

impl QuestionAnsweringPipeline {
    /// Assembles the pipeline; the model needs a question-answering head and the tokenizer a
    /// sentence-pair template.
    pub fn new(model: Box<dyn TaskModel>, tokenizer: Tokenizer) -> Result<Self> {
        require_head(
            model.as_ref(),
            Task::QuestionAnswering,
            "question_answering",
        )?;
        Ok(QuestionAnsweringPipeline { model, tokenizer })
    }

    /// The best answers to `question` in `context`.
    pub fn call(&self, question: &str, context: &str, o: &QaOptions) -> Result<Vec<Answer>> {
        if question.trim().is_empty() {
            return Err(invalid("the question is empty"));
        }
        if context.trim().is_empty() {
            return Err(invalid(
                "the context is empty: every question needs a context",
            ));
        }
        if o.top_k == 0 {
            return Err(invalid("top_k must be at least 1"));
        }
        if o.max_answer_len == 0 {
            return Err(invalid("max_answer_len must be at least 1"));
        }
        let max_len = o
            .max_seq_len
            .unwrap_or_else(|| self.tokenizer.model_max_length.min(384))
            .min(self.model.max_positions());
        let stride = o.doc_stride.unwrap_or((max_len / 2).min(128));
        if stride > max_len {
            return Err(invalid(format!(
                "doc_stride ({stride}) is larger than max_seq_len ({max_len})"
            )));
        }
        let cls = self.tokenizer.cls_token_id();
        let mut answers = Vec::new();
        let mut min_null = 1_000_000f32;
        for w in self
            .tokenizer
            .encode_windows(question, context, max_len, stride)?
        {
            let out = forward_rows(self.model.as_ref(), &[&w])?;
            let start_logits = to_vec_f32(
                out.start_logits
                    .as_ref()
                    .ok_or_else(|| invalid("no start logits"))?,
            )?;
            let end_logits = to_vec_f32(
                out.end_logits
                    .as_ref()
                    .ok_or_else(|| invalid("no end logits"))?,
            )?;
            // Context tokens, and [CLS], may hold the answer.
            let wanted: Vec<bool> = (0..w.input_ids.len())
                .map(|i| w.sequence_ids[i] == Some(1) || Some(w.input_ids[i]) == cls)
                .collect();
            let probs = |l: &[f32]| -> Vec<f32> {
                let masked: Vec<f32> = l
                    .iter()
                    .zip(&wanted)
                    .map(|(x, ok)| if *ok { *x } else { -10000.0 })
                    .collect();
                crate::task::softmax(&masked)
            };
            let (mut ps, mut pe) = (probs(&start_logits), probs(&end_logits));
            if o.handle_impossible_answer {
                min_null = min_null.min(ps[0] * pe[0]);
            }
            ps[0] = 0.0;
            pe[0] = 0.0;
            // Every (s, e) with s <= e < s + max_answer_len, best first (ties in the
            // row-major order of the flattened score matrix). Some candidates are lost to
            // word alignment, so 2·top_k + 10 are taken, as transformers does.
            let t = ps.len();
            let mut cands: Vec<(f32, usize, usize)> = Vec::new();
            for (s, p_start) in ps.iter().enumerate() {
                for (e, p_end) in pe
                    .iter()
                    .enumerate()
                    .take(t.min(s + o.max_answer_len))
                    .skip(s)
                {
                    cands.push((p_start * p_end, s, e));
                }
            }
            cands.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
            for &(score, s, e) in cands.iter().take(2 * o.top_k + 10) {
                if !(wanted[s] && wanted[e]) {
                    continue;
                }
                let (cs, ce) = self.word_span(&w, s, e);
                let text = char_slice(context, cs, ce);
                // The same answer text (any case) found again adds its score.
                match answers
                    .iter_mut()
                    .find(|a: &&mut Answer| a.answer.to_lowercase() == text.to_lowercase())
                {
                    Some(a) => a.score += score as f64,
                    None => answers.push(Answer {
                        score: score as f64,
                        start: cs,
                        end: ce,
                        answer: text,
                    }),
                }
            }
        }
        if o.handle_impossible_answer {
            answers.push(Answer {
                score: min_null as f64,
                start: 0,
                end: 0,
                answer: String::new(),
            });
        }
        answers.sort_by(|a, b| b.score.total_cmp(&a.score));
        answers.truncate(o.top_k);
        Ok(answers)
    }

    /// Character span of tokens `s..=e` widened to whole words of the context.
    fn word_span(&self, w: &EncodedRow, s: usize, e: usize) -> (usize, usize) {
        let span_of_word = |word: Option<u32>| -> Option<(usize, usize)> {
            let word = word?;
            let idx: Vec<usize> = (0..w.input_ids.len())
                .filter(|&i| w.sequence_ids[i] == Some(1) && w.word_ids[i] == Some(word))
                .collect();
            Some((w.offsets[*idx.first()?].0, w.offsets[*idx.last()?].1))
        };
        match (span_of_word(w.word_ids[s]), span_of_word(w.word_ids[e])) {
            (Some(a), Some(b)) => (a.0, b.1),
            _ => (w.offsets[s].0, w.offsets[e].1),
        }
    }
}

impl Pipeline for QuestionAnsweringPipeline {
    fn task(&self) -> &'static str {
        "question_answering"
    }

    fn run(&self, inputs: &[PipelineInput], opts: &CallOptions) -> Result<Vec<Value>> {
        opts.reject(
            "question_answering",
            &[
                "top_k",
                "doc_stride",
                "max_answer_len",
                "max_seq_len",
                "handle_impossible_answer",
            ],
        )?;
        let d = QaOptions::default();
        let o = QaOptions {
            top_k: opts.top_k_checked()?.unwrap_or(1),
            doc_stride: opts.doc_stride,
            max_answer_len: opts.max_answer_len.unwrap_or(d.max_answer_len),
            max_seq_len: opts.max_seq_len,
            handle_impossible_answer: opts.handle_impossible_answer,
        };
        inputs
            .iter()
            .map(|i| {
                let PipelineInput::Qa { question, context } = i else {
                    return Err(invalid(
                        "question_answering takes question/context pairs (--question Q --context C)",
                    ));
                };
                let a = self.call(question, context, &o)?;
                // One answer alone, several as a list (both libraries).
                Ok(if a.len() == 1 {
                    a[0].to_json(opts.format)
                } else {
                    Value::Array(a.iter().map(|x| x.to_json(opts.format)).collect())
                })
            })
            .collect()
    }
}
