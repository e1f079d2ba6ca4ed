//! The pipeline interface every task implements (preprocess → forward → postprocess behind
//! one `run`), its inputs and call options, and the two output formats.
use mf_core::{invalid, MfError, Result};
use mf_models::{ModelInputs, ModelOutput, TaskModel};
use mf_tokenizers::{EncodeOptions, EncodedRow, Tokenizer};
use serde_json::Value;

/// One input of a pipeline call.
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineInput {
    /// A text (a prompt, a sentence with `[MASK]`, ...).
    Text(String),
    /// A sentence pair (`{"text": ..., "text_pair": ...}`).
    Pair {
        /// First segment.
        text: String,
        /// Second segment.
        text_pair: String,
    },
    /// A question about a context.
    Qa {
        /// The question.
        question: String,
        /// The text holding the answer.
        context: String,
    },
}

impl From<&str> for PipelineInput {
    fn from(s: &str) -> Self {
        PipelineInput::Text(s.to_string())
    }
}

impl PipelineInput {
    /// The text of a `Text` input, or an error naming what the task expects.
    pub fn text(&self, task: &str) -> Result<&str> {
        match self {
            PipelineInput::Text(t) => Ok(t),
            _ => Err(invalid(format!("{task} takes plain texts"))),
        }
    }
}

/// Output layout: MindFormers' (the default) or Hugging Face's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// As MindFormers' pipelines return it (question answering's `text` key, inclusive
    /// entity `end`).
    #[default]
    MindFormers,
    /// As transformers' pipelines return it.
    Hf,
}

impl std::str::FromStr for OutputFormat {
    type Err = MfError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mindformers" | "ms" => Ok(OutputFormat::MindFormers),
            "hf" | "transformers" => Ok(OutputFormat::Hf),
            other => Err(MfError::unknown(
                "output format",
                other,
                &["mindformers", "hf"],
            )),
        }
    }
}

/// How token-classification pieces are merged into entities (HF's `aggregation_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AggregationStrategy {
    /// One result per token.
    #[default]
    None,
    /// Adjacent tokens of one entity are grouped (B-/I- tags).
    Simple,
    /// A word takes its first token's label.
    First,
    /// A word takes the label of the averaged token scores.
    Average,
    /// A word takes the label of its most confident token.
    Max,
}

impl std::str::FromStr for AggregationStrategy {
    type Err = MfError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "none" => AggregationStrategy::None,
            "simple" => AggregationStrategy::Simple,
            "first" => AggregationStrategy::First,
            "average" => AggregationStrategy::Average,
            "max" => AggregationStrategy::Max,
            other => {
                return Err(MfError::unknown(
                    "aggregation strategy",
                    other,
                    &["none", "simple", "first", "average", "max"],
                ))
            }
        })
    }
}

/// Sentence-embedding pooling for feature extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Every token's hidden state (`[1, len, hidden]`), as HF's pipeline returns.
    None,
    /// Mean over real tokens.
    Mean,
    /// The first (`[CLS]`) token.
    Cls,
}

impl std::str::FromStr for Pooling {
    type Err = MfError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => Pooling::None,
            "mean" => Pooling::Mean,
            "cls" => Pooling::Cls,
            other => return Err(MfError::unknown("pooling", other, &["none", "mean", "cls"])),
        })
    }
}

/// Per-call options; each task reads the ones it has and rejects the ones it has not.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Output layout.
    pub format: OutputFormat,
    /// Candidates / labels / answers to return.
    pub top_k: Option<usize>,
    /// Token classification: how pieces merge into entities.
    pub aggregation_strategy: Option<AggregationStrategy>,
    /// Question answering: overlap of the windows a long context is split into.
    pub doc_stride: Option<usize>,
    /// Question answering: longest answer in tokens (15).
    pub max_answer_len: Option<usize>,
    /// Question answering: tokens per window (min(model max, 384)).
    pub max_seq_len: Option<usize>,
    /// Question answering: also consider "no answer".
    pub handle_impossible_answer: bool,
    /// Feature extraction: pooling (default: the directory's sentence-transformers config,
    /// else none).
    pub pooling: Option<Pooling>,
    /// Feature extraction: L2-normalise the pooled embedding.
    pub normalize: bool,
    /// Text generation settings.
    pub generation: mf_models::GenerationOverrides,
}

impl CallOptions {
    /// `top_k`, rejecting 0.
    pub fn top_k_checked(&self) -> Result<Option<usize>> {
        match self.top_k {
            Some(0) => Err(invalid("top_k must be at least 1")),
            k => Ok(k),
        }
    }

    /// Errors when an option another task owns was set.
    pub fn reject(&self, task: &str, allowed: &[&str]) -> Result<()> {
        let set = [
            ("top_k", self.top_k.is_some()),
            ("aggregation_strategy", self.aggregation_strategy.is_some()),
            ("doc_stride", self.doc_stride.is_some()),
            ("max_answer_len", self.max_answer_len.is_some()),
            ("max_seq_len", self.max_seq_len.is_some()),
            ("handle_impossible_answer", self.handle_impossible_answer),
            ("pooling", self.pooling.is_some()),
            ("normalize", self.normalize),
        ];
        for (name, on) in set {
            if on && !allowed.contains(&name) {
                return Err(invalid(format!("{task} has no option {name}")));
            }
        }
        Ok(())
    }
}

/// A task pipeline: inputs in, one JSON value per input out (exactly what the chosen
/// library's pipeline returns for that single input).
pub trait Pipeline: Send {
    /// The task name (MindFormers' spelling).
    fn task(&self) -> &'static str;
    /// Runs every input.
    fn run(&self, inputs: &[PipelineInput], opts: &CallOptions) -> Result<Vec<Value>>;
}

/// Tokenizes one text (or pair) with the model's special tokens.
pub(crate) fn encode_one(
    tokenizer: &Tokenizer,
    text: &str,
    pair: Option<&str>,
    truncate_to: Option<usize>,
) -> Result<EncodedRow> {
    if text.trim().is_empty() && pair.is_none_or(|p| p.trim().is_empty()) {
        return Err(invalid("an input text is empty"));
    }
    let opts = EncodeOptions {
        truncation: truncate_to.is_some(),
        max_length: truncate_to,
        ..Default::default()
    };
    let mut rows = tokenizer.encode_rows(&[(text, pair)], &opts)?;
    rows.pop()
        .ok_or_else(|| invalid("the tokenizer returned nothing"))
}

/// Runs the model on one or more rows of equal length (one row per window) under no_grad.
pub(crate) fn forward_rows(model: &dyn TaskModel, rows: &[&EncodedRow]) -> Result<ModelOutput> {
    let t = |f: fn(&EncodedRow) -> &Vec<u32>| -> Result<tch::Tensor> {
        let v: Vec<Vec<u32>> = rows.iter().map(|r| f(r).clone()).collect();
        mf_tokenizers::encoding::rows_to_tensor(&v, "rows")
    };
    let ids = t(|r| &r.input_ids)?;
    let mask = t(|r| &r.attention_mask)?;
    let tt = t(|r| &r.token_type_ids)?;
    let max = model.max_positions() as i64;
    if ids.size()[1] > max {
        return Err(invalid(format!(
            "the input is {} tokens long but the model takes at most {max}; shorten it",
            ids.size()[1]
        )));
    }
    let _g = tch::no_grad_guard();
    let input = ModelInputs {
        input_ids: Some(&ids),
        attention_mask: Some(&mask),
        token_type_ids: model.uses_token_type_ids().then_some(&tt),
        ..Default::default()
    };
    model.forward(&input)
}

/// A float tensor's values as f32 (CPU).
pub(crate) fn to_vec_f32(t: &tch::Tensor) -> Result<Vec<f32>> {
    let t = t
        .to_device(tch::Device::Cpu)
        .to_kind(tch::Kind::Float)
        .contiguous()
        .view([-1]);
    Ok(Vec::<f32>::try_from(&t)?)
}

/// Softmax in f32 as numpy computes it in HF's postprocessing (max subtracted first).
pub(crate) fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// The head a model must have, as an error when it has another.
pub(crate) fn require_head(model: &dyn TaskModel, want: mf_models::Task, task: &str) -> Result<()> {
    if model.task() != want {
        return Err(invalid(format!(
            "{task} needs a model with a {want} head, but this {} model has a {} head; load it \
             with {}",
            model.model_type(),
            model.task(),
            want.auto_class()
        )));
    }
    Ok(())
}
