//! The task-generic model interface: one base trait every model implements
//! ([`PreTrainedModel`]), task heads over it ([`TaskModel`]), the head's typed inputs and
//! [`ModelOutput`], whose loss the head computes from `labels`.
use std::path::Path;

use mf_core::{invalid, DType, Device, MfError, Result};
use tch::{Kind, Tensor};

/// The head a model carries, named after transformers' `AutoModelFor<Task>` classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// The base model: hidden states (and a pooled output where the family has one).
    Base,
    /// Next-token prediction.
    CausalLM,
    /// Masked-token prediction.
    MaskedLM,
    /// One label (or several) per sequence.
    SequenceClassification,
    /// One label per token.
    TokenClassification,
    /// Start / end logits of an answer span.
    QuestionAnswering,
}

impl Task {
    /// Every head, in listing order.
    pub const ALL: [Task; 6] = [
        Task::Base,
        Task::CausalLM,
        Task::MaskedLM,
        Task::SequenceClassification,
        Task::TokenClassification,
        Task::QuestionAnswering,
    ];

    /// The transformers class suffix (`ForMaskedLM`; empty for the base model).
    pub fn class_suffix(self) -> &'static str {
        match self {
            Task::Base => "Model",
            Task::CausalLM => "ForCausalLM",
            Task::MaskedLM => "ForMaskedLM",
            Task::SequenceClassification => "ForSequenceClassification",
            Task::TokenClassification => "ForTokenClassification",
            Task::QuestionAnswering => "ForQuestionAnswering",
        }
    }

    /// The head named by an `architectures` entry (`BertForMaskedLM` -> MaskedLM).
    pub fn from_architecture(arch: &str) -> Option<Task> {
        if arch.ends_with("ForPreTraining") || arch.ends_with("ForMaskedLM") {
            return Some(Task::MaskedLM);
        }
        if arch.ends_with("LMHeadModel") {
            return Some(Task::CausalLM);
        }
        Task::ALL
            .into_iter()
            .filter(|t| *t != Task::Base)
            .find(|t| arch.ends_with(t.class_suffix()))
            .or_else(|| arch.ends_with("Model").then_some(Task::Base))
    }

    /// The `AutoModelFor...` name, for messages.
    pub fn auto_class(self) -> String {
        match self {
            Task::Base => "AutoModel".into(),
            t => format!("AutoModel{}", t.class_suffix()),
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Base => "base model",
            Task::CausalLM => "causal LM",
            Task::MaskedLM => "masked LM",
            Task::SequenceClassification => "sequence classification",
            Task::TokenClassification => "token classification",
            Task::QuestionAnswering => "question answering",
        })
    }
}

/// Inputs of one forward pass of a task model (all `[batch, len]` int64 unless noted).
#[derive(Debug, Default)]
pub struct ModelInputs<'a> {
    /// Token ids.
    pub input_ids: Option<&'a Tensor>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Option<&'a Tensor>,
    /// Segment ids (sentence A = 0, B = 1).
    pub token_type_ids: Option<&'a Tensor>,
    /// Position of each token; defaults to the family's rule.
    pub position_ids: Option<&'a Tensor>,
    /// Targets the head computes its loss from: token ids (`-100` = ignored) for LM heads,
    /// `[batch]` class ids (or `[batch, labels]` floats for multi-label) for sequence
    /// classification, `[batch, len]` label ids for token classification.
    pub labels: Option<&'a Tensor>,
    /// Answer start token `[batch]` (question answering).
    pub start_positions: Option<&'a Tensor>,
    /// Answer end token `[batch]` (question answering).
    pub end_positions: Option<&'a Tensor>,
    /// Apply dropout (training).
    pub train: bool,
    /// Return every layer's hidden states.
    pub output_hidden_states: bool,
}

impl<'a> ModelInputs<'a> {
    /// Ids and mask only, inference mode.
    pub fn new(input_ids: &'a Tensor, attention_mask: Option<&'a Tensor>) -> Self {
        ModelInputs {
            input_ids: Some(input_ids),
            attention_mask,
            ..Default::default()
        }
    }
}

/// What a head returns; fields a head does not produce are `None`.
#[derive(Debug, Default)]
pub struct ModelOutput {
    /// Head logits: `[batch, len, vocab]` (LM), `[batch, labels]`, `[batch, len, labels]`.
    pub logits: Option<Tensor>,
    /// Answer-start logits `[batch, len]` (question answering).
    pub start_logits: Option<Tensor>,
    /// Answer-end logits `[batch, len]` (question answering).
    pub end_logits: Option<Tensor>,
    /// Mean loss over the non-ignored targets, when labels were given.
    pub loss: Option<Tensor>,
    /// The encoder's last hidden states `[batch, len, hidden]`.
    pub last_hidden_state: Option<Tensor>,
    /// The pooled `[batch, hidden]` output (BERT's pooler over `[CLS]`).
    pub pooler_output: Option<Tensor>,
    /// Embedding output then every layer's output, when asked for.
    pub hidden_states: Option<Vec<Tensor>>,
}

impl ModelOutput {
    /// The logits, or an error naming what the head returns instead.
    pub fn logits(&self) -> Result<&Tensor> {
        self.logits
            .as_ref()
            .ok_or_else(|| invalid("this model's head returns no logits"))
    }

    /// The loss, or an error saying labels are needed.
    pub fn loss(&self) -> Result<&Tensor> {
        self.loss.as_ref().ok_or_else(|| {
            invalid("the model returned no loss: pass labels (or start/end positions)")
        })
    }
}

/// What every model offers, whatever its head: weights IO, device and dtype, parameters,
/// its config. `Send`, so a pipeline can move into a server thread.
pub trait PreTrainedModel: Send {
    /// The family name (`bert`, `roberta`, `gpt2`, ...).
    fn model_type(&self) -> &str;
    /// The head this model carries.
    fn task(&self) -> Task;
    /// The Hugging Face `config.json` content.
    fn config_json(&self) -> serde_json::Value;
    /// Where the weights live.
    fn device(&self) -> tch::Device;
    /// Moves weights to a device and dtype.
    fn to(&mut self, device: Device, dtype: DType) -> Result<()>;
    /// Number of parameters.
    fn num_parameters(&self) -> usize;
    /// Trainable parameters under their checkpoint (HF) names, in a stable order.
    fn parameters(&self) -> Vec<(String, Tensor)>;
    /// Copies a checkpoint's tensors into the model, failing on any mismatch.
    fn load_weights(&self, ckpt: &mf_core::checkpoint::SafeTensors) -> Result<()>;
    /// Writes `config.json` and `model.safetensors` in the Hugging Face layout.
    fn save_pretrained(&self, dir: &Path) -> Result<()>;
    /// The linear layers LoRA can adapt, under their HF module names (none by default).
    fn lora_layers(&mut self) -> Vec<(String, &mut dyn crate::lora::LoraHost)> {
        Vec::new()
    }
}

/// A model with a task head: one forward that returns a typed [`ModelOutput`].
pub trait TaskModel: PreTrainedModel {
    /// Runs the model; with labels in `input` the output carries the head's loss.
    fn forward(&self, input: &ModelInputs<'_>) -> Result<ModelOutput>;
    /// Class names of a classification head, by id (`id2label`); empty for other heads.
    fn id2label(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether a sequence-classification head is multi-label (sigmoid, BCE loss).
    fn multi_label(&self) -> bool {
        false
    }
    /// Longest input the position embeddings cover.
    fn max_positions(&self) -> usize;
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
    /// Loads a checkpoint that may lack this model's head (a base model fine-tuned into a new
    /// task): every tensor it has is copied, the head keeps its initialisation, and the names
    /// of the parameters it did not have are returned (and printed as a warning).
    fn load_base_weights(&self, ckpt: &mf_core::checkpoint::SafeTensors) -> Result<Vec<String>> {
        self.load_weights(ckpt)?;
        Ok(Vec::new())
    }
    /// Whether the model reads `token_type_ids` (BERT yes, RoBERTa no).
    fn uses_token_type_ids(&self) -> bool {
        true
    }
}

/// Cross-entropy of `logits [n, classes]` against `labels [n]`, ignoring `-100`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let c = *logits.size().last().unwrap_or(&0);
    Ok(logits
        .f_reshape([-1, c])?
        .to_kind(Kind::Float)
        .f_cross_entropy_loss::<Tensor>(
            &labels.f_reshape([-1])?.to_device(logits.device()),
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        )?)
}

/// Next-token loss: logits at position i predict `labels[i + 1]`; `-100` is ignored (the
/// masked prompt of supervised fine-tuning, padding).
pub fn causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let t = logits.size()[1];
    if labels.size()[..2] != logits.size()[..2] {
        return Err(MfError::Shape(format!(
            "labels are {:?} but the logits {:?}",
            labels.size(),
            logits.size()
        )));
    }
    cross_entropy(&logits.narrow(1, 0, t - 1), &labels.narrow(1, 1, t - 1))
}

/// Checks that a `[batch, len]` companion of `input_ids` has the right shape.
pub fn check_same_shape(name: &str, t: Option<&Tensor>, want: &[i64]) -> Result<()> {
    if let Some(t) = t {
        if t.size() != want {
            return Err(MfError::Shape(format!(
                "{name} is {:?}, expected {want:?} like input_ids",
                t.size()
            )));
        }
    }
    Ok(())
}

/// Checks that every value of `t` lies in `[0, limit)`.
pub fn check_range(name: &str, t: &Tensor, limit: i64, fix: &str) -> Result<()> {
    if t.numel() == 0 {
        return Ok(());
    }
    let (lo, hi) = (t.min().int64_value(&[]), t.max().int64_value(&[]));
    if lo < 0 || hi >= limit {
        return Err(invalid(format!(
            "{name} contain {} outside [0, {limit}); {fix}",
            if lo < 0 { lo } else { hi }
        )));
    }
    Ok(())
}
