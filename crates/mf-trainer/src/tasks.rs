//! The Trainer's tasks (MindFormers' names, HF aliases) and what each needs: its head, how a
//! batch becomes the head's inputs (masked-LM masking included), and its evaluation metrics.
use mf_core::{invalid, MfError, Result};
use mf_models::Task;
use tch::{Kind, Tensor};

/// A training task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainTask {
    /// Causal language modelling (pretraining, or fine-tuning with masked `labels`).
    TextGeneration,
    /// Sequence classification.
    TextClassification,
    /// Token classification (NER).
    TokenClassification,
    /// Extractive question answering.
    QuestionAnswering,
    /// Masked-LM pretraining.
    FillMask,
}

/// Tasks the trainer knows (MindFormers' names).
pub const TASKS: &[&str] = &[
    "text_generation",
    "text_classification",
    "token_classification",
    "question_answering",
    "fill_mask",
];

impl TrainTask {
    /// The task called `name` (MindFormers' or HF's spelling).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.replace('-', "_").as_str() {
            "text_generation" | "causal_language_modeling" => TrainTask::TextGeneration,
            "text_classification" | "sentiment_analysis" => TrainTask::TextClassification,
            "token_classification" | "ner" => TrainTask::TokenClassification,
            "question_answering" => TrainTask::QuestionAnswering,
            "fill_mask" | "masked_language_modeling" => TrainTask::FillMask,
            _ => return Err(MfError::unknown("task", name, TASKS)),
        })
    }

    /// MindFormers' name.
    pub fn name(self) -> &'static str {
        match self {
            TrainTask::TextGeneration => "text_generation",
            TrainTask::TextClassification => "text_classification",
            TrainTask::TokenClassification => "token_classification",
            TrainTask::QuestionAnswering => "question_answering",
            TrainTask::FillMask => "fill_mask",
        }
    }

    /// The head the task trains.
    pub fn head(self) -> Task {
        match self {
            TrainTask::TextGeneration => Task::CausalLM,
            TrainTask::TextClassification => Task::SequenceClassification,
            TrainTask::TokenClassification => Task::TokenClassification,
            TrainTask::QuestionAnswering => Task::QuestionAnswering,
            TrainTask::FillMask => Task::MaskedLM,
        }
    }
}

/// BERT's masking: 15% of the non-special tokens are predicted; of those 80% become the mask
/// token, 10% a random token, 10% stay. Draws from libtorch's generator (the trainer seeds it
/// per micro-batch, so resume redraws the same masks). Returns `(input_ids, labels)`.
pub fn mask_tokens(
    ids: &Tensor,
    special_tokens_mask: &Tensor,
    mask_id: i64,
    vocab: i64,
    probability: f64,
) -> Result<(Tensor, Tensor)> {
    let normal = special_tokens_mask.eq(0);
    let draw = |p: f64| {
        ids.to_kind(Kind::Float)
            .full_like(p)
            .bernoulli()
            .to_kind(Kind::Bool)
    };
    let mut picked = draw(probability).logical_and(&normal);
    if picked.sum(Kind::Int64).int64_value(&[]) == 0 {
        // Every batch predicts something: the first ordinary token of each row.
        let first = normal.to_kind(Kind::Int64).cumsum(1, Kind::Int64).eq(1);
        picked = first.logical_and(&normal);
    }
    if picked.sum(Kind::Int64).int64_value(&[]) == 0 {
        return Err(invalid("a masked-LM batch has no ordinary tokens to mask"));
    }
    let labels = ids.where_self(&picked, &ids.full_like(-100));
    let replace = draw(0.8).logical_and(&picked);
    let random = draw(0.5)
        .logical_and(&picked)
        .logical_and(&replace.logical_not());
    let random_ids = Tensor::randint_like_low_dtype(ids, 0, vocab);
    let out = ids.full_like(mask_id).where_self(&replace, ids);
    let out = random_ids.where_self(&random, &out);
    Ok((out, labels))
}

/// A head's inputs by column name (`input_ids`, `labels`, `attention_mask`, ...), rows first:
/// what the trainer forms from a batch, and what a data-parallel rank gets its rows of.
pub type Columns = Vec<(&'static str, Tensor)>;

/// Runs the head over `cols` (with labels, its output carries the loss).
pub fn forward_columns(
    m: &dyn mf_models::TaskModel,
    cols: &[(&'static str, Tensor)],
    train: bool,
) -> Result<mf_models::ModelOutput> {
    let get = |n: &str| cols.iter().find(|(c, _)| *c == n).map(|(_, t)| t);
    m.forward(&mf_models::ModelInputs {
        input_ids: get("input_ids"),
        attention_mask: get("attention_mask"),
        token_type_ids: get("token_type_ids"),
        labels: get("labels"),
        start_positions: get("start_positions"),
        end_positions: get("end_positions"),
        train,
        ..Default::default()
    })
}

/// The number of targets the head's mean loss over `cols` divides by: label tokens other than
/// `-100` for token classification and masked LM (and single-label classification, whose
/// cross-entropy ignores `-100` too), rows otherwise. Question answering counts rows: exact
/// while every answer position lies inside its window, as `mf_data::nlp` makes them.
pub fn loss_count(
    task: TrainTask,
    m: &dyn mf_models::TaskModel,
    cols: &[(&'static str, Tensor)],
) -> i64 {
    let rows = cols.first().map_or(0, |(_, t)| t.size()[0]);
    let labels = cols.iter().find(|(c, _)| *c == "labels").map(|(_, t)| t);
    let ignoring = match task {
        TrainTask::TokenClassification | TrainTask::FillMask => true,
        TrainTask::TextClassification => labels.is_some_and(|l| {
            l.kind() == Kind::Int64 && l.dim() == 1 && m.id2label().len() > 1 && !m.multi_label()
        }),
        _ => false,
    };
    match labels {
        Some(l) if ignoring => l.ne(-100).sum(Kind::Int64).int64_value(&[]),
        _ => rows,
    }
}

/// Entities of one tag sequence under strict IOB2 (seqeval's strict mode): an entity starts
/// at `B-X` and continues over `I-X`; an `I-` that does not continue an entity of its type
/// starts none. Returns `(type, start, end)` with `end` exclusive.
pub fn strict_entities(tags: &[String]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize)> = None;
    for (i, t) in tags.iter().enumerate() {
        let cont = match (&open, t.strip_prefix("I-")) {
            (Some((ty, _)), Some(x)) => ty == x,
            _ => false,
        };
        if cont {
            continue;
        }
        if let Some((ty, s)) = open.take() {
            out.push((ty, s, i));
        }
        if let Some(x) = t.strip_prefix("B-") {
            open = Some((x.to_string(), i));
        }
    }
    if let Some((ty, s)) = open {
        out.push((ty, s, tags.len()));
    }
    out
}

/// Entity-level precision, recall and F1 over sentences (exact type and span match).
pub fn entity_prf(pred: &[Vec<String>], gold: &[Vec<String>]) -> (f64, f64, f64) {
    let (mut tp, mut np, mut ng) = (0usize, 0usize, 0usize);
    for (p, g) in pred.iter().zip(gold) {
        let (pe, ge) = (strict_entities(p), strict_entities(g));
        np += pe.len();
        ng += ge.len();
        tp += pe.iter().filter(|e| ge.contains(e)).count();
    }
    let p = if np == 0 { 0.0 } else { tp as f64 / np as f64 };
    let r = if ng == 0 { 0.0 } else { tp as f64 / ng as f64 };
    let f = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    (p, r, f)
}

/// The official SQuAD answer normalisation: lower case, no punctuation, no articles, single
/// spaces.
pub fn normalize_answer(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// SQuAD exact match and token F1 of a prediction against its best gold answer.
pub fn squad_em_f1(pred: &str, golds: &[String]) -> (f64, f64) {
    let p = normalize_answer(pred);
    let pt: Vec<&str> = p.split_whitespace().collect();
    let mut best = (0.0f64, 0.0f64);
    for g in golds {
        let g = normalize_answer(g);
        let em = (p == g) as u8 as f64;
        let gt: Vec<&str> = g.split_whitespace().collect();
        let mut counts = std::collections::HashMap::new();
        for t in &gt {
            *counts.entry(*t).or_insert(0i32) += 1;
        }
        let mut common = 0;
        for t in &pt {
            if let Some(c) = counts.get_mut(t) {
                if *c > 0 {
                    *c -= 1;
                    common += 1;
                }
            }
        }
        let f1 = if pt.is_empty() || gt.is_empty() {
            (pt == gt) as u8 as f64
        } else if common == 0 {
            0.0
        } else {
            let (pr, rc) = (
                common as f64 / pt.len() as f64,
                common as f64 / gt.len() as f64,
            );
            2.0 * pr * rc / (pr + rc)
        };
        best = (best.0.max(em), best.1.max(f1));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn strict_bio_spans_as_seqeval() {
        assert_eq!(
            strict_entities(&tags("B-PER I-PER O B-LOC I-ORG I-ORG B-LOC")),
            vec![
                ("PER".into(), 0, 2),
                ("LOC".into(), 3, 4),
                ("LOC".into(), 6, 7)
            ]
        );
        // An I- with no B- before it is no entity in strict mode.
        assert!(strict_entities(&tags("O I-PER I-PER")).is_empty());
        let (p, r, f) = entity_prf(
            &[tags("B-PER I-PER O B-LOC")],
            &[tags("B-PER I-PER O B-ORG")],
        );
        assert_eq!((p, r, f), (0.5, 0.5, 0.5));
    }

    #[test]
    fn squad_normalisation_and_scores() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        let (em, f1) = squad_em_f1("the Eiffel tower", &["Eiffel Tower".into()]);
        assert_eq!((em, f1), (1.0, 1.0));
        let (em, f1) = squad_em_f1("in Paris France", &["Paris".into(), "France".into()]);
        assert_eq!(em, 0.0);
        assert!((f1 - 0.5).abs() < 1e-12, "{f1}");
    }

    #[test]
    fn masking_keeps_specials_and_labels_only_masked_tokens() {
        tch::manual_seed(0);
        let ids = Tensor::from_slice(&[101i64, 5, 6, 7, 8, 9, 10, 11, 12, 102]).repeat([64, 1]);
        let special = Tensor::from_slice(&[1i64, 0, 0, 0, 0, 0, 0, 0, 0, 1]).repeat([64, 1]);
        let (inp, labels) = mask_tokens(&ids, &special, 103, 1000, 0.15).unwrap();
        let picked = labels.ne(-100);
        let frac = picked
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
            * 10.0
            / 8.0;
        assert!((frac - 0.15).abs() < 0.05, "{frac}");
        // Specials are never picked; labels hold the original ids.
        assert_eq!(picked.select(1, 0).sum(Kind::Int64).int64_value(&[]), 0);
        assert!(labels
            .masked_select(&picked)
            .equal(&ids.masked_select(&picked)));
        let masked = inp
            .eq(103)
            .logical_and(&picked)
            .sum(Kind::Int64)
            .double_value(&[]);
        let n = picked.sum(Kind::Int64).double_value(&[]);
        assert!((masked / n - 0.8).abs() < 0.12, "{}", masked / n);
        // Unpicked tokens are untouched.
        assert!(inp
            .masked_select(&picked.logical_not())
            .equal(&ids.masked_select(&picked.logical_not())));
    }
}
