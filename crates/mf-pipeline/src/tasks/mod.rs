//! One module per task pipeline.
pub mod feature_extraction;
pub mod fill_mask;
pub mod question_answering;
pub mod text_classification;
pub mod token_classification;

pub use feature_extraction::FeatureExtractionPipeline;
pub use fill_mask::FillMaskPipeline;
pub use question_answering::QuestionAnsweringPipeline;
pub use text_classification::TextClassificationPipeline;
pub use token_classification::TokenClassificationPipeline;
