//! Task pipelines: `pipeline("text_generation").model("gpt2").max_length(10).build()`, and
//! every other task through `build_task()`: fill_mask, text_classification,
//! token_classification, question_answering, feature_extraction.
pub mod builder;
pub mod repr;
pub mod task;
pub mod tasks;
pub mod text_generation;

pub use builder::{
    pipeline, resolve_task, ModelArg, PipelineBuilder, TaskSpec, TASKS, TASK_REGISTRY,
};
pub use task::{AggregationStrategy, CallOptions, OutputFormat, Pipeline, PipelineInput, Pooling};
pub use tasks::{
    FeatureExtractionPipeline, FillMaskPipeline, QuestionAnsweringPipeline,
    TextClassificationPipeline, TokenClassificationPipeline,
};
pub use text_generation::{TextGenerationOutput, TextGenerationPipeline};
