//! The Trainer (text generation, text / token classification, question answering, masked
//! LM): `TrainingArguments`, optimizers, LR schedules, mixed precision, callbacks,
//! metrics, checkpoints that resume exactly, and `mf run`'s MindFormers-style run configs.
pub mod amp;
pub mod args;
pub mod callbacks;
pub mod checkpoint;
pub mod flops;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod replica;
pub mod run_config;
pub mod runner;
pub mod schedule;
pub mod tasks;
pub mod trainer;

pub use amp::LossScaler;
pub use args::{ResumeFrom, TrainingArguments};
pub use callbacks::{
    Callback, CheckpointMonitor, EarlyStopping, EvalMetrics, EvalMonitor, Every, LogRecord,
    LossMonitor, StepInfo, TrainBegin, TrainerControl,
};
pub use metrics::{accuracy, ComputeMetrics, EvalPrediction};
pub use model::TrainModel;
pub use parallel::{ParallelConfig, RecomputeConfig};
pub use run_config::RunConfig;
pub use schedule::{LrSchedule, LrSchedulerType};
pub use tasks::{TrainTask, TASKS};
pub use trainer::{DatasetArg, IntoModel, TrainOutput, Trainer};
