//! `token_classification` (`ner`): a label per token, merged into entities with
//! transformers' `TokenClassificationPipeline` rules: `aggregation_strategy` none (one result
//! per token), simple (B-/I- groups), first / average / max (a word's pieces share one
//! label), and the `O` label left out.
use mf_core::{invalid, Result};
use mf_models::{Task, TaskModel};
use mf_tokenizers::Tokenizer;
use serde_json::{json, Value};

use crate::task::{
    encode_one, forward_rows, require_head, softmax, to_vec_f32, AggregationStrategy, CallOptions,
    OutputFormat, Pipeline, PipelineInput,
};

/// One recognised token or entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// The label (`B-PER`) with strategy none; the entity type (`PER`) otherwise.
    pub entity: String,
    /// Its score.
    pub score: f64,
    /// Token index, with strategy none.
    pub index: Option<usize>,
    /// The token (`##lin`) or the merged word(s).
    pub word: String,
    /// First character (inclusive).
    pub start: usize,
    /// Last character (exclusive).
    pub end: usize,
}

impl Entity {
    /// As the chosen library returns it.
    pub fn to_json(&self, format: OutputFormat) -> Value {
        // MindFormers reports the last character itself, not one past it.
        let end = match format {
            OutputFormat::Hf => self.end,
            OutputFormat::MindFormers => self.end.saturating_sub(1),
        };
        match self.index {
            Some(index) => json!({"entity": self.entity, "score": self.score, "index": index,
                "word": self.word, "start": self.start, "end": end}),
            None => json!({"entity_group": self.entity, "score": self.score,
                "word": self.word, "start": self.start, "end": end}),
        }
    }
}

struct PreEntity {
    word: String,
    scores: Vec<f32>,
    start: usize,
    end: usize,
    index: usize,
    is_subword: bool,
}

/// A token classifier with its tokenizer.
pub struct TokenClassificationPipeline {
    model: Box<dyn TaskModel>,
    tokenizer: Tokenizer,
    labels: Vec<String>,
}

fn char_slice(s: &str, start: usize, end: usize) -> String {
    s.chars()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect()
}

/// `B-PER` -> (B, PER); `I-PER` -> (I, PER); anything else is an inside tag of itself.
fn tag(label: &str) -> (&str, &str) {
    if let Some(t) = label.strip_prefix("B-") {
        ("B", t)
    } else if let Some(t) = label.strip_prefix("I-") {
        ("I", t)
    } else {
        ("I", label)
    }
}

fn argmax(v: &[f32]) -> usize {
    // numpy's argmax: the first of equal maxima.
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

impl TokenClassificationPipeline {
    /// Assembles the pipeline; the model needs a token-classification head.
    pub fn new(model: Box<dyn TaskModel>, tokenizer: Tokenizer) -> Result<Self> {
        require_head(
            model.as_ref(),
            Task::TokenClassification,
            "token_classification",
        )?;
        let labels = model.id2label();
        Ok(TokenClassificationPipeline {
            model,
            tokenizer,
            labels,
        })
    }

    fn label(&self, i: usize) -> String {
        self.labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("LABEL_{i}"))
    }

    /// The entities of `text` under `strategy`, `O` left out.
    pub fn call(&self, text: &str, strategy: AggregationStrategy) -> Result<Vec<Entity>> {
        let row = encode_one(&self.tokenizer, text, None, None)?;
        let out = forward_rows(self.model.as_ref(), &[&row])?;
        let logits = out.logits()?.get(0);
        let n = logits.size()[1] as usize;
        let flat = to_vec_f32(&logits)?;
        let unk = self
            .tokenizer
            .unk_token
            .as_deref()
            .and_then(|u| self.tokenizer.token_to_id(u));
        let mut pre = Vec::new();
        for (idx, &id) in row.input_ids.iter().enumerate() {
            if row.special_tokens_mask[idx] == 1 {
                continue;
            }
            let (start, end) = row.offsets[idx];
            let word_ref = char_slice(text, start, end);
            let mut word = row.tokens[idx].clone();
            // A WordPiece tokenizer knows its pieces: a token whose string differs in length
            // from the text it covers is a `##` continuation.
            let mut is_subword = word.chars().count() != word_ref.chars().count();
            if Some(id) == unk {
                word = word_ref;
                is_subword = false;
            }
            pre.push(PreEntity {
                word,
                scores: softmax(&flat[idx * n..(idx + 1) * n]),
                start,
                end,
                index: idx,
                is_subword,
            });
        }
        let entities = match strategy {
            AggregationStrategy::None | AggregationStrategy::Simple => {
                let tokens: Vec<Entity> = pre
                    .iter()
                    .map(|p| {
                        let i = argmax(&p.scores);
                        Entity {
                            entity: self.label(i),
                            score: p.scores[i] as f64,
                            index: Some(p.index),
                            word: p.word.clone(),
                            start: p.start,
                            end: p.end,
                        }
                    })
                    .collect();
                if strategy == AggregationStrategy::None {
                    tokens
                } else {
                    self.group(&tokens)?
                }
            }
            _ => {
                let mut words: Vec<Vec<&PreEntity>> = Vec::new();
                for p in &pre {
                    match words.last_mut() {
                        Some(w) if p.is_subword => w.push(p),
                        _ => words.push(vec![p]),
                    }
                }
                let merged = words
                    .iter()
                    .map(|w| self.aggregate_word(w, strategy))
                    .collect::<Result<Vec<_>>>()?;
                self.group(&merged)?
            }
        };
        Ok(entities.into_iter().filter(|e| e.entity != "O").collect())
    }

    fn aggregate_word(&self, w: &[&PreEntity], strategy: AggregationStrategy) -> Result<Entity> {
        let tokens: Vec<String> = w.iter().map(|p| p.word.clone()).collect();
        let word = self.tokenizer.convert_tokens_to_string(&tokens)?;
        let (label, score) = match strategy {
            AggregationStrategy::First => {
                let i = argmax(&w[0].scores);
                (i, w[0].scores[i])
            }
            AggregationStrategy::Max => {
                let best = w.iter().enumerate().fold(0, |b, (k, p)| {
                    let m = |p: &PreEntity| p.scores.iter().copied().fold(f32::MIN, f32::max);
                    if m(p) > m(w[b]) {
                        k
                    } else {
                        b
                    }
                });
                let i = argmax(&w[best].scores);
                (i, w[best].scores[i])
            }
            _ => {
                let n = w[0].scores.len();
                let avg: Vec<f32> = (0..n)
                    .map(|c| w.iter().map(|p| p.scores[c]).sum::<f32>() / w.len() as f32)
                    .collect();
                let i = argmax(&avg);
                (i, avg[i])
            }
        };
        Ok(Entity {
            entity: self.label(label),
            score: score as f64,
            index: None,
            word,
            start: w[0].start,
            end: w[w.len() - 1].end,
        })
    }

    fn group(&self, entities: &[Entity]) -> Result<Vec<Entity>> {
        let mut groups = Vec::new();
        let mut current: Vec<&Entity> = Vec::new();
        for e in entities {
            if let Some(last) = current.last() {
                let (bi, t) = tag(&e.entity);
                let (_, last_t) = tag(&last.entity);
                if !(t == last_t && bi != "B") {
                    groups.push(self.group_sub(&current)?);
                    current.clear();
                }
            }
            current.push(e);
        }
        if !current.is_empty() {
            groups.push(self.group_sub(&current)?);
        }
        Ok(groups)
    }

    fn group_sub(&self, es: &[&Entity]) -> Result<Entity> {
        let name = es[0]
            .entity
            .split_once('-')
            .map_or(es[0].entity.as_str(), |(_, t)| t);
        let tokens: Vec<String> = es.iter().map(|e| e.word.clone()).collect();
        Ok(Entity {
            entity: name.to_string(),
            score: es.iter().map(|e| e.score).sum::<f64>() / es.len() as f64,
            index: None,
            word: self.tokenizer.convert_tokens_to_string(&tokens)?,
            start: es[0].start,
            end: es[es.len() - 1].end,
        })
    }
}

impl Pipeline for TokenClassificationPipeline {
    fn task(&self) -> &'static str {
        "token_classification"
    }

    fn run(&self, inputs: &[PipelineInput], opts: &CallOptions) -> Result<Vec<Value>> {
        opts.reject("token_classification", &["aggregation_strategy"])?;
        let strategy = opts.aggregation_strategy.unwrap_or_default();
        inputs
            .iter()
            .map(|i| {
                let text = i.text("token_classification")?;
                if text.trim().is_empty() {
                    return Err(invalid("an input text is empty"));
                }
                let es = self.call(text, strategy)?;
                Ok(Value::Array(
                    es.iter().map(|e| e.to_json(opts.format)).collect(),
                ))
            })
            .collect()
    }
}
