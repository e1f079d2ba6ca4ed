//! Task pipelines: `pipeline("text_generation").model("gpt2").max_length(10).build()`.
pub mod builder;
pub mod repr;
pub mod text_generation;

pub use builder::{pipeline, ModelArg, PipelineBuilder, TASKS};
pub use text_generation::{TextGenerationOutput, TextGenerationPipeline};
