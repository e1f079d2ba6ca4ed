//! Callbacks: hooks into the training loop, and the ones MindFormers ships (loss monitor,
//! checkpoint monitor, evaluation, early stopping). Saving and evaluating are decided by
//! callbacks setting [`TrainerControl`] flags (as in HF's `TrainerCallback`), so removing the
//! `checkpoint` callback stops periodic saves and a user callback can ask for a save.
use std::collections::BTreeMap;
use std::path::Path;

use mf_core::{invalid, Result};

use crate::args::TrainingArguments;

/// What the loop is about to run, given to `on_train_begin`.
#[derive(Debug, Clone)]
pub struct TrainBegin<'a> {
    /// The run's arguments.
    pub args: &'a TrainingArguments,
    /// Optimizer steps in the run.
    pub total_steps: usize,
    /// Optimizer steps already done (after a resume).
    pub start_step: usize,
    /// Whether an evaluation dataset was given.
    pub has_eval_dataset: bool,
    /// Parameters the optimizer updates (the adapters only, under LoRA).
    pub trainable_parameters: usize,
    /// All parameters of the model (base and adapters).
    pub total_parameters: usize,
    /// Memory of the optimizer's state (moments, f32 masters).
    pub optimizer_state_bytes: usize,
}

/// Where training is after an optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    /// Optimizer step just done (1-based).
    pub step: usize,
    /// Steps in the run.
    pub total_steps: usize,
    /// Fractional epoch reached.
    pub epoch: f64,
    /// Whether this step finished an epoch.
    pub epoch_end: bool,
    /// The step's loss.
    pub loss: f64,
    /// False when fp16 loss scaling skipped the update because gradients overflowed.
    pub applied: bool,
}

/// Flags callbacks set to steer the loop; reset after the loop acts on them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainerControl {
    /// Write a checkpoint after this step.
    pub should_save: bool,
    /// Evaluate after this step.
    pub should_evaluate: bool,
    /// Stop training after this step.
    pub should_stop: bool,
}

/// One logged training step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogRecord {
    /// Fractional epoch.
    pub epoch: f64,
    /// Optimizer step (1-based).
    pub step: usize,
    /// Steps in the run.
    pub total_steps: usize,
    /// Mean loss over the steps since the last log.
    pub loss: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds per step since the last log.
    pub step_time_s: f64,
    /// Tokens per second since the last log.
    pub tokens_per_s: f64,
    /// Samples per second since the last log.
    pub samples_per_s: f64,
    /// Model FLOPs utilisation: 6·N·tokens/s over the device's measured matmul rate.
    pub mfu: f64,
    /// fp16's loss scale, when training in fp16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
}

/// Evaluation results.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvalMetrics {
    /// Mean next-token cross-entropy.
    pub eval_loss: f64,
    /// exp(eval_loss).
    pub perplexity: f64,
    /// Batches evaluated.
    pub batches: usize,
    /// What `compute_metrics` returned.
    pub metrics: BTreeMap<String, f64>,
}

impl EvalMetrics {
    /// A metric by name: `eval_loss`, `perplexity` or one from `compute_metrics`.
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "eval_loss" | "loss" => Some(self.eval_loss),
            "perplexity" => Some(self.perplexity),
            other => self.metrics.get(other).copied(),
        }
    }
}

/// Hooks into the training loop. Every method has a default that does nothing.
pub trait Callback {
    /// A name, for `remove_callback`.
    fn name(&self) -> &str;
    /// Before the first step; an error here stops `train()` before it starts.
    fn on_train_begin(&mut self, _begin: &TrainBegin) -> Result<()> {
        Ok(())
    }
    /// After every optimizer step.
    fn on_step_end(&mut self, _step: &StepInfo, _control: &mut TrainerControl) {}
    /// After a logged step.
    fn on_log(&mut self, _record: &LogRecord) {}
    /// After a checkpoint was written.
    fn on_save(&mut self, _dir: &Path) {}
    /// After an evaluation at `step`.
    fn on_evaluate(
        &mut self,
        _step: usize,
        _metrics: &EvalMetrics,
        _control: &mut TrainerControl,
    ) -> Result<()> {
        Ok(())
    }
    /// After the last step (or an early stop).
    fn on_train_end(&mut self, _global_step: usize) {}
}

/// MindFormers' `MFLossMonitor`: one line per logged step. On a terminal it also draws a
/// progress bar with ETA on stderr and prints the lines above it (the `progress` feature); in
/// logs and pipes, plain lines only.
#[derive(Default)]
pub struct LossMonitor {
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl LossMonitor {
    /// A loss monitor (the trainer installs one by default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Prints a line above the progress bar, or plainly when there is none.
    fn print(&self, line: String) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.println(line);
            return;
        }
        println!("{line}");
    }
}

/// The log line for a record.
pub fn format_log(r: &LogRecord) -> String {
    let mut line = format!(
        "epoch {:.2} step {}/{} loss {:.4} lr {:.3e} grad_norm {:.3} step_time {:.3}s tokens/s {:.0} samples/s {:.1} mfu {:.1}%",
        r.epoch,
        r.step,
        r.total_steps,
        r.loss,
        r.lr,
        r.grad_norm,
        r.step_time_s,
        r.tokens_per_s,
        r.samples_per_s,
        r.mfu * 100.0
    );
    if let Some(s) = r.loss_scale {
        line += &format!(" loss_scale {s}");
    }
    line
}

impl Callback for LossMonitor {
    fn name(&self) -> &str {
        "loss_monitor"
    }
    fn on_train_begin(&mut self, b: &TrainBegin) -> Result<()> {
        println!(
            "trainable parameters: {} of {} ({:.2}%), optimizer state {:.1} MiB",
            b.trainable_parameters,
            b.total_parameters,
            100.0 * b.trainable_parameters as f64 / b.total_parameters.max(1) as f64,
            b.optimizer_state_bytes as f64 / (1024.0 * 1024.0)
        );
        #[cfg(feature = "progress")]
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = indicatif::ProgressBar::new(b.total_steps as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            ) {
                bar.set_style(style);
            }
            bar.set_position(b.start_step as u64);
            bar.reset_eta();
            self.bar = Some(bar);
        }
        Ok(())
    }
    fn on_step_end(&mut self, _s: &StepInfo, _control: &mut TrainerControl) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.set_position(_s.step as u64);
            bar.set_message(format!("loss {:.4}", _s.loss));
        }
    }
    fn on_log(&mut self, r: &LogRecord) {
        self.print(format_log(r));
    }
    fn on_evaluate(
        &mut self,
        step: usize,
        m: &EvalMetrics,
        _control: &mut TrainerControl,
    ) -> Result<()> {
        let mut line = format!(
            "eval at step {step}: eval_loss {:.4} perplexity {:.3}",
            m.eval_loss, m.perplexity
        );
        for (k, v) in &m.metrics {
            line += &format!(" {k} {v:.4}");
        }
        self.print(line);
        Ok(())
    }
    fn on_train_end(&mut self, _global_step: usize) {
        #[cfg(feature = "progress")]
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// When to act: never, every N steps, or at each epoch's end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Every {
    /// Never.
    Never,
    /// Every this many optimizer steps.
    Steps(usize),
    /// At the end of every epoch.
    Epoch,
}

impl Every {
    fn parse(field: &str, strategy: &str, steps: usize) -> Result<Self> {
        match strategy {
            "no" => Ok(Every::Never),
            "steps" => Ok(Every::Steps(steps.max(1))),
            "epoch" => Ok(Every::Epoch),
            other => Err(invalid(format!(
                "{field} = '{other}': expected no, steps or epoch"
            ))),
        }
    }

    fn due(self, s: &StepInfo) -> bool {
        match self {
            Every::Never => false,
            Every::Steps(n) => s.step.is_multiple_of(n),
            Every::Epoch => s.epoch_end,
        }
    }
}

/// MindFormers' `CheckpointMonitor`: asks for a checkpoint every `save_steps` steps or at each
/// epoch's end (`save_strategy`), and at the last step. Installed by default.
pub struct CheckpointMonitor {
    every: Option<Every>,
    resolved: Every,
}

impl CheckpointMonitor {
    /// Follows `save_strategy` / `save_steps` of the run's arguments.
    pub fn from_args() -> Self {
        CheckpointMonitor {
            every: None,
            resolved: Every::Never,
        }
    }

    /// Saves on its own schedule, whatever the arguments say.
    pub fn every(every: Every) -> Self {
        CheckpointMonitor {
            every: Some(every),
            resolved: every,
        }
    }
}

impl Callback for CheckpointMonitor {
    fn name(&self) -> &str {
        "checkpoint"
    }
    fn on_train_begin(&mut self, b: &TrainBegin) -> Result<()> {
        self.resolved = match self.every {
            Some(e) => e,
            None => Every::parse("save_strategy", &b.args.save_strategy, b.args.save_steps)?,
        };
        Ok(())
    }
    fn on_step_end(&mut self, s: &StepInfo, control: &mut TrainerControl) {
        if self.resolved != Every::Never && (self.resolved.due(s) || s.step == s.total_steps) {
            control.should_save = true;
        }
    }
}

/// Asks for an evaluation per `evaluation_strategy` / `eval_steps` (MindFormers' `EvalCallBack`).
/// Installed by default; an evaluation strategy without an `eval_dataset` is an error.
pub struct EvalMonitor {
    every: Every,
}

impl EvalMonitor {
    /// Follows the run's arguments.
    pub fn new() -> Self {
        EvalMonitor {
            every: Every::Never,
        }
    }
}

impl Default for EvalMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl Callback for EvalMonitor {
    fn name(&self) -> &str {
        "evaluation"
    }
    fn on_train_begin(&mut self, b: &TrainBegin) -> Result<()> {
        let a = b.args;
        self.every = Every::parse(
            "evaluation_strategy",
            &a.evaluation_strategy,
            a.eval_steps.unwrap_or(a.logging_steps),
        )?;
        if self.every != Every::Never && !b.has_eval_dataset {
            return Err(invalid(format!(
                "evaluation_strategy = '{}' needs an eval_dataset: pass one, or set evaluation_strategy = \"no\"",
                a.evaluation_strategy
            )));
        }
        Ok(())
    }
    fn on_step_end(&mut self, s: &StepInfo, control: &mut TrainerControl) {
        if self.every.due(s) {
            control.should_evaluate = true;
        }
    }
}

/// Stops training when `metric` has not improved by more than `threshold` for `patience`
/// evaluations in a row (HF's `EarlyStoppingCallback`).
pub struct EarlyStopping {
    /// Evaluations without improvement tolerated.
    pub patience: usize,
    /// Improvement smaller than this does not count.
    pub threshold: f64,
    /// The metric watched (`eval_loss`, `perplexity` or a `compute_metrics` key).
    pub metric: String,
    /// Whether larger values are better (accuracy) or smaller (loss).
    pub greater_is_better: bool,
    best: Option<f64>,
    bad_evals: usize,
}

impl EarlyStopping {
    /// Watches `eval_loss` (lower is better).
    pub fn new(patience: usize) -> Self {
        EarlyStopping {
            patience,
            threshold: 0.0,
            metric: "eval_loss".into(),
            greater_is_better: false,
            best: None,
            bad_evals: 0,
        }
    }

    /// Watches another metric.
    pub fn metric(mut self, name: &str, greater_is_better: bool) -> Self {
        self.metric = name.to_string();
        self.greater_is_better = greater_is_better;
        self
    }

    /// Minimum improvement that counts.
    pub fn threshold(mut self, t: f64) -> Self {
        self.threshold = t;
        self
    }

    /// The best value seen.
    pub fn best(&self) -> Option<f64> {
        self.best
    }
}

impl Callback for EarlyStopping {
    fn name(&self) -> &str {
        "early_stopping"
    }
    fn on_train_begin(&mut self, b: &TrainBegin) -> Result<()> {
        if self.patience == 0 {
            return Err(invalid("EarlyStopping patience must be at least 1"));
        }
        if b.args.evaluation_strategy == "no" {
            return Err(invalid(
                "EarlyStopping needs evaluations: set evaluation_strategy to \"steps\" or \"epoch\" and pass an eval_dataset",
            ));
        }
        self.best = None;
        self.bad_evals = 0;
        Ok(())
    }
    fn on_evaluate(
        &mut self,
        _step: usize,
        m: &EvalMetrics,
        control: &mut TrainerControl,
    ) -> Result<()> {
        let v = m.get(&self.metric).ok_or_else(|| {
            let mut known = vec!["eval_loss".to_string(), "perplexity".to_string()];
            known.extend(m.metrics.keys().cloned());
            invalid(format!(
                "EarlyStopping watches '{}', which the evaluation does not report (it reports {})",
                self.metric,
                known.join(", ")
            ))
        })?;
        let improved = match self.best {
            None => true,
            Some(b) if self.greater_is_better => v > b + self.threshold,
            Some(b) => v < b - self.threshold,
        };
        if improved {
            self.best = Some(v);
            self.bad_evals = 0;
        } else {
            self.bad_evals += 1;
            if self.bad_evals >= self.patience {
                control.should_stop = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: usize, epoch_end: bool) -> StepInfo {
        StepInfo {
            step,
            total_steps: 10,
            epoch: 0.0,
            epoch_end,
            loss: 1.0,
            applied: true,
        }
    }

    fn begin(args: &TrainingArguments, eval: bool) -> TrainBegin<'_> {
        TrainBegin {
            args,
            total_steps: 10,
            start_step: 0,
            has_eval_dataset: eval,
            trainable_parameters: 1,
            total_parameters: 1,
            optimizer_state_bytes: 8,
        }
    }

    #[test]
    fn checkpoint_and_eval_schedules() {
        let args = TrainingArguments {
            save_steps: 4,
            evaluation_strategy: "epoch".into(),
            ..Default::default()
        };
        let mut ck = CheckpointMonitor::from_args();
        ck.on_train_begin(&begin(&args, true)).unwrap();
        let saves: Vec<usize> = (1..=10)
            .filter(|&s| {
                let mut c = TrainerControl::default();
                ck.on_step_end(&step(s, false), &mut c);
                c.should_save
            })
            .collect();
        assert_eq!(saves, vec![4, 8, 10]);
        let mut ev = EvalMonitor::new();
        ev.on_train_begin(&begin(&args, true)).unwrap();
        let mut c = TrainerControl::default();
        ev.on_step_end(&step(3, false), &mut c);
        assert!(!c.should_evaluate);
        ev.on_step_end(&step(5, true), &mut c);
        assert!(c.should_evaluate);
        let err = EvalMonitor::new()
            .on_train_begin(&begin(&args, false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("eval_dataset"), "{err}");
    }

    #[test]
    fn early_stopping_counts_evaluations_without_improvement() {
        let args = TrainingArguments {
            evaluation_strategy: "steps".into(),
            ..Default::default()
        };
        let mut es = EarlyStopping::new(2).threshold(0.01);
        es.on_train_begin(&begin(&args, true)).unwrap();
        let metrics = |loss: f64| EvalMetrics {
            eval_loss: loss,
            perplexity: loss.exp(),
            batches: 1,
            metrics: BTreeMap::new(),
        };
        let mut stops = Vec::new();
        for (i, loss) in [3.0, 2.0, 1.995, 2.5, 1.0, 1.2, 1.1]
            .into_iter()
            .enumerate()
        {
            let mut c = TrainerControl::default();
            es.on_evaluate(i, &metrics(loss), &mut c).unwrap();
            stops.push(c.should_stop);
        }
        // 1.995 is within the threshold of 2.0: with 2.5 that is two evaluations without
        // improvement; 1.0 resets the count; 1.2 and 1.1 exhaust the patience again.
        assert_eq!(stops, [false, false, false, true, false, false, true]);
        assert_eq!(es.best(), Some(1.0));
        let mut acc = EarlyStopping::new(1).metric("accuracy", true);
        acc.on_train_begin(&begin(&args, true)).unwrap();
        let err = acc
            .on_evaluate(0, &metrics(1.0), &mut TrainerControl::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("accuracy") && err.contains("perplexity"),
            "{err}"
        );
        let no_eval = TrainingArguments::default();
        assert!(EarlyStopping::new(1)
            .on_train_begin(&begin(&no_eval, true))
            .is_err());
    }
}
