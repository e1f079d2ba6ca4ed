//! The Trainer: `TrainingArguments`, optimizers, LR schedules, callbacks and checkpoints that
//! resume exactly.
pub mod args;
pub mod checkpoint;
pub mod optim;
pub mod parallel;
pub mod schedule;
pub mod trainer;

pub use args::{ResumeFrom, TrainingArguments};
pub use parallel::{ParallelConfig, RecomputeConfig};
pub use schedule::{LrSchedule, LrSchedulerType};
pub use trainer::{
    Callback, DatasetArg, EvalMetrics, LogRecord, LossMonitor, TrainOutput, Trainer,
};
