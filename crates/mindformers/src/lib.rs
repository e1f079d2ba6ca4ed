//! mindformers-rs: MindFormers' high-level API for Rust.
//!
//! - AutoClass: [`AutoConfig`], [`AutoModel`], [`AutoTokenizer`], [`AutoProcessor`]
//! - Models: [`GPT2Config`], [`GPT2LMHeadModel`], [`LlamaConfig`], [`LlamaForCausalLM`],
//!   [`BloomConfig`], [`BloomForCausalLM`], [`GlmConfig`], [`GlmForCausalLM`],
//!   [`PanguAlphaConfig`], [`PanguAlphaHeadModel`], generation with [`GenerationConfig`]
//! - Encoders: [`BertConfig`], [`BertModel`], [`BertForMaskedLM`], ... with RoBERTa and
//!   XLM-RoBERTa, loaded by `AutoModelFor<Task>`
//! - Pipelines: [`pipeline`]`("text_generation")`, and `build_task()` for fill_mask,
//!   text_classification, token_classification, question_answering, feature_extraction
//! - Training: [`Trainer`], [`TrainingArguments`], [`GeneratorDataset`]
//! - Environment: [`init_context`] with [`ContextConfig`] and [`ParallelContextConfig`];
//!   [`launch()`] starts one process per rank (`mf launch`)
pub mod launch;

pub use launch::{launch, LaunchOptions};
pub use mf_core::{
    self as core, init_context, ContextConfig, DType, Device, MfError, ParallelContextConfig,
    ParallelMode, Result,
};
pub use mf_models::{
    self as models, generate, AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
    AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
    AutoModelForTokenClassification, Bert, BertConfig, BertForMaskedLM, BertForQuestionAnswering,
    BertForSequenceClassification, BertForTokenClassification, BertModel, BloomConfig,
    BloomForCausalLM, CausalLM, FamilyConfig, ForwardInput, GPT2Config, GPT2LMHeadModel,
    GenerationConfig, GenerationOverrides, GlmConfig, GlmForCausalLM, LlamaConfig,
    LlamaForCausalLM, LoraConfig, ModelConfig, ModelInputs, ModelOutput, PanguAlphaConfig,
    PanguAlphaHeadModel, PreTrainedModel, Streamer, Task, TaskModel, TextStreamer,
};
pub use mf_pipeline::{
    self as pipelines, pipeline, AggregationStrategy, CallOptions, FeatureExtractionPipeline,
    FillMaskPipeline, OutputFormat, Pipeline, PipelineInput, Pooling, QuestionAnsweringPipeline,
    TextClassificationPipeline, TextGenerationOutput, TextGenerationPipeline,
    TokenClassificationPipeline,
};
pub use mf_tokenizers::{
    self as tokenizers, AutoProcessor, AutoTokenizer, BatchEncoding, BertTokenizer, EncodeOptions,
    EncodedRow, GPT2Processor, GPT2Tokenizer, Padding, PaddingSide, Tokenizer,
};

/// Prints pipeline results exactly as MindFormers does (`[{'text_generation_text': [...]}]`).
pub fn format_outputs(outputs: &[TextGenerationOutput]) -> String {
    mf_pipeline::text_generation::Outputs(outputs).to_string()
}
pub use mf_data::{self as data, Batch, BatchedDataset, Column, Dataset, GeneratorDataset};
pub use mf_trainer::{
    self as trainer, Callback, CheckpointMonitor, EarlyStopping, EvalMetrics, EvalMonitor,
    EvalPrediction, LogRecord, LossMonitor, StepInfo, TrainOutput, Trainer, TrainerControl,
    TrainingArguments,
};
