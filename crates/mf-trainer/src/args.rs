//! `TrainingArguments`: MindFormers' field names and defaults, from Rust or TOML.
use mf_core::{invalid, Result};
use serde::{Deserialize, Serialize};

use crate::schedule::{LrSchedule, LrSchedulerType};

/// Which checkpoint a run resumes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResumeFrom {
    /// `true`: the newest complete checkpoint in `output_dir`; `false`: none.
    Latest(bool),
    /// A checkpoint directory.
    Path(String),
}

/// Training hyperparameters. Unknown keys are errors listing the valid ones.
///
/// `sink_mode`/`sink_size`: MindSpore runs `sink_size` steps on the device between host
/// round trips. Here, with `sink_mode` on, host-side callbacks (logging, `on_log`) run only at
/// sink boundaries, so the logging interval is `logging_steps` rounded up to a multiple of
/// `sink_size`; with it off they run every `logging_steps`. The loss itself is still read back
/// every step, so a NaN stops training before it corrupts the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingArguments {
    /// Where checkpoints, metrics and plots go.
    pub output_dir: String,
    /// Seed for initialisation, dropout and data order.
    pub seed: u64,
    /// Seed for the data order only (defaults to `seed`).
    pub data_seed: Option<u64>,
    /// Epochs to train (fractions allowed).
    pub num_train_epochs: f64,
    /// Stop after this many optimizer steps (overrides epochs).
    pub max_steps: Option<usize>,
    /// MindFormers' global batch size; overrides `per_device_train_batch_size` when set.
    pub batch_size: Option<usize>,
    /// Samples per device per micro-step when the dataset is not already batched.
    pub per_device_train_batch_size: usize,
    /// Evaluation batch size when the dataset is not already batched.
    pub per_device_eval_batch_size: usize,
    /// Micro-steps whose gradients add up to one optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// cosine, linear, polynomial, constant, constant_with_warmup, cosine_with_restarts.
    pub lr_scheduler_type: String,
    /// Final learning rate of decaying schedules.
    pub lr_end: f64,
    /// Warmup steps (takes precedence over `warmup_ratio`).
    pub warmup_steps: Option<usize>,
    /// Warmup as a fraction of all steps.
    pub warmup_ratio: Option<f64>,
    /// Learning rate at the start of warmup.
    pub warmup_lr_init: f64,
    /// adamw, adam or sgd.
    pub optim: String,
    /// Adam β1.
    pub adam_beta1: f64,
    /// Adam β2.
    pub adam_beta2: f64,
    /// Adam ε.
    pub adam_epsilon: f64,
    /// Weight decay (not applied to biases and norm weights).
    pub weight_decay: f64,
    /// Clip gradients by global norm.
    pub use_clip_grad: bool,
    /// Global-norm clipping threshold.
    pub max_grad_norm: f64,
    /// Log every this many steps.
    pub logging_steps: usize,
    /// no, steps or epoch.
    pub save_strategy: String,
    /// Save every this many steps (`save_strategy = "steps"`).
    pub save_steps: usize,
    /// Keep at most this many checkpoints (oldest removed first).
    pub save_total_limit: Option<usize>,
    /// no, steps or epoch.
    pub evaluation_strategy: String,
    /// Evaluate every this many steps (defaults to `logging_steps`).
    pub eval_steps: Option<usize>,
    /// Resume from the newest checkpoint (`true`) or a given one (a path).
    pub resume_from_checkpoint: Option<ResumeFrom>,
    /// On resume, start the data from the epoch's beginning instead of where it stopped.
    pub ignore_data_skip: bool,
    /// Run host-side callbacks at sink boundaries only (see the type's docs).
    pub sink_mode: bool,
    /// Steps per sink.
    pub sink_size: usize,
    /// Drop the last incomplete batch.
    pub dataloader_drop_last: bool,
    /// Shuffle the training data each epoch.
    pub shuffle: bool,
    /// bf16 mixed precision (f32 master weights).
    pub bf16: bool,
    /// fp16 mixed precision with dynamic loss scaling (f32 master weights; meant for CUDA,
    /// also runs, slowly, on CPU).
    pub fp16: bool,
    /// fp16: the initial loss scale.
    pub loss_scale_value: f64,
    /// fp16: the factor the loss scale grows and backs off by.
    pub loss_scale_factor: f64,
    /// fp16: good steps in a row before the loss scale grows.
    pub loss_scale_window: usize,
}

impl Default for TrainingArguments {
    fn default() -> Self {
        TrainingArguments {
            output_dir: "./output".into(),
            seed: 42,
            data_seed: None,
            num_train_epochs: 3.0,
            max_steps: None,
            batch_size: None,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            learning_rate: 5e-5,
            lr_scheduler_type: "cosine".into(),
            lr_end: 1e-6,
            warmup_steps: None,
            warmup_ratio: None,
            warmup_lr_init: 0.0,
            optim: "adamw".into(),
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 0.0,
            use_clip_grad: false,
            max_grad_norm: 1.0,
            logging_steps: 1,
            save_strategy: "steps".into(),
            save_steps: 500,
            save_total_limit: None,
            evaluation_strategy: "no".into(),
            eval_steps: None,
            resume_from_checkpoint: None,
            ignore_data_skip: false,
            sink_mode: true,
            sink_size: 2,
            dataloader_drop_last: true,
            shuffle: true,
            bf16: false,
            fp16: false,
            loss_scale_value: 65536.0,
            loss_scale_factor: 2.0,
            loss_scale_window: 1000,
        }
    }
}

fn one_of(name: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{name} = '{value}': expected one of {}",
            allowed.join(", ")
        )))
    }
}

impl TrainingArguments {
    /// Parses TOML (MindFormers' keys); unknown keys are errors listing the valid ones.
    pub fn from_toml(text: &str) -> Result<Self> {
        let args: TrainingArguments = mf_core::config::parse_toml(text, "TrainingArguments")?;
        args.validate()?;
        Ok(args)
    }

    /// The arguments as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| invalid(e.to_string()))
    }

    /// Samples per micro-step.
    pub fn train_batch_size(&self) -> usize {
        self.batch_size.unwrap_or(self.per_device_train_batch_size)
    }

    /// Checks every value; errors name the field and the valid range.
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(invalid(format!("{name} = {v} must be a positive number")))
            }
        };
        pos("learning_rate", self.learning_rate)?;
        pos("num_train_epochs", self.num_train_epochs)?;
        pos("adam_epsilon", self.adam_epsilon)?;
        pos("max_grad_norm", self.max_grad_norm)?;
        for (name, v) in [
            ("batch_size", self.train_batch_size()),
            (
                "per_device_eval_batch_size",
                self.per_device_eval_batch_size,
            ),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            ("logging_steps", self.logging_steps),
            ("save_steps", self.save_steps),
            ("sink_size", self.sink_size),
            ("loss_scale_window", self.loss_scale_window),
        ] {
            if v == 0 {
                return Err(invalid(format!("{name} must be at least 1")));
            }
        }
        if self.max_steps == Some(0) {
            return Err(invalid("max_steps must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.adam_beta1) || !(0.0..=1.0).contains(&self.adam_beta2) {
            return Err(invalid("adam_beta1 and adam_beta2 must be in [0, 1]"));
        }
        if self.weight_decay < 0.0 || self.lr_end < 0.0 || self.warmup_lr_init < 0.0 {
            return Err(invalid(
                "weight_decay, lr_end and warmup_lr_init must not be negative",
            ));
        }
        if let Some(r) = self.warmup_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(invalid(format!("warmup_ratio = {r} must be in [0, 1]")));
            }
        }
        self.lr_scheduler_type.parse::<LrSchedulerType>()?;
        one_of("optim", &self.optim, &["adamw", "adam", "sgd"])?;
        one_of(
            "save_strategy",
            &self.save_strategy,
            &["no", "steps", "epoch"],
        )?;
        one_of(
            "evaluation_strategy",
            &self.evaluation_strategy,
            &["no", "steps", "epoch"],
        )?;
        if !(self.loss_scale_value >= 1.0 && self.loss_scale_value.is_finite()) {
            return Err(invalid(format!(
                "loss_scale_value = {} must be a finite number >= 1",
                self.loss_scale_value
            )));
        }
        if !(self.loss_scale_factor > 1.0 && self.loss_scale_factor.is_finite()) {
            return Err(invalid(format!(
                "loss_scale_factor = {} must be a finite number > 1",
                self.loss_scale_factor
            )));
        }
        if self.bf16 && self.fp16 {
            return Err(invalid("bf16 and fp16 are exclusive; pick one"));
        }
        Ok(())
    }

    /// The schedule for a run of `total_steps` optimizer steps.
    pub fn schedule(&self, total_steps: usize) -> Result<LrSchedule> {
        let warmup = match (self.warmup_steps, self.warmup_ratio) {
            (Some(w), _) => w,
            (None, Some(r)) => (r * total_steps as f64).ceil() as usize,
            (None, None) => 0,
        };
        Ok(LrSchedule {
            kind: self.lr_scheduler_type.parse()?,
            learning_rate: self.learning_rate,
            warmup_lr_init: self.warmup_lr_init,
            lr_end: self.lr_end.min(self.learning_rate),
            warmup_steps: warmup,
            total_steps,
            power: 1.0,
            num_cycles: 1.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_example_and_toml() {
        let a = TrainingArguments {
            num_train_epochs: 3.0,
            batch_size: Some(2),
            learning_rate: 0.001,
            warmup_steps: Some(1000),
            sink_mode: true,
            ..Default::default()
        };
        a.validate().unwrap();
        assert_eq!(a.train_batch_size(), 2);
        let back = TrainingArguments::from_toml(&a.to_toml().unwrap()).unwrap();
        assert_eq!(back, a);
        let t =
            TrainingArguments::from_toml("learning_rate = 0.01\nresume_from_checkpoint = true\n")
                .unwrap();
        assert_eq!(t.resume_from_checkpoint, Some(ResumeFrom::Latest(true)));
        let t =
            TrainingArguments::from_toml("resume_from_checkpoint = \"out/checkpoint/step_4\"\n")
                .unwrap();
        assert_eq!(
            t.resume_from_checkpoint,
            Some(ResumeFrom::Path("out/checkpoint/step_4".into()))
        );
    }

    #[test]
    fn bad_values_are_named() {
        let err = TrainingArguments::from_toml("learning_rat = 0.1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("learning_rat") && err.contains("learning_rate"),
            "{err}"
        );
        let bad = |a: TrainingArguments| a.validate().unwrap_err().to_string();
        assert!(bad(TrainingArguments {
            learning_rate: -1.0,
            ..Default::default()
        })
        .contains("learning_rate"));
        assert!(bad(TrainingArguments {
            batch_size: Some(0),
            ..Default::default()
        })
        .contains("batch_size"));
        assert!(bad(TrainingArguments {
            optim: "lamb".into(),
            ..Default::default()
        })
        .contains("optim"));
        assert!(bad(TrainingArguments {
            lr_scheduler_type: "step".into(),
            ..Default::default()
        })
        .contains("lr_scheduler_type"));
        assert!(bad(TrainingArguments {
            bf16: true,
            fp16: true,
            ..Default::default()
        })
        .contains("exclusive"));
    }
}
