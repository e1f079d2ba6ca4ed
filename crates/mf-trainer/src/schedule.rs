//! Learning-rate schedules with warmup (transformers' formulas, MindFormers' names).
use mf_core::{invalid, MfError, Result};

/// Which schedule follows the warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrSchedulerType {
    /// Half a cosine from the peak to `lr_end`.
    Cosine,
    /// Straight line from the peak to `lr_end`.
    Linear,
    /// `(peak - lr_end) * (1 - progress)^power + lr_end`.
    Polynomial,
    /// The peak throughout, warmup ignored.
    Constant,
    /// Linear warmup, then the peak.
    ConstantWithWarmup,
    /// Cosine restarted `num_cycles` times.
    CosineWithRestarts,
}

impl std::str::FromStr for LrSchedulerType {
    type Err = MfError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "cosine" => Self::Cosine,
            "linear" => Self::Linear,
            "polynomial" => Self::Polynomial,
            "constant" => Self::Constant,
            "constant_with_warmup" => Self::ConstantWithWarmup,
            "cosine_with_restarts" => Self::CosineWithRestarts,
            other => {
                return Err(invalid(format!(
                    "lr_scheduler_type '{other}': expected cosine, linear, polynomial, constant, \
                     constant_with_warmup or cosine_with_restarts"
                )))
            }
        })
    }
}

/// A schedule resolved for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    /// Shape after warmup.
    pub kind: LrSchedulerType,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Learning rate at the start of warmup.
    pub warmup_lr_init: f64,
    /// Final learning rate (cosine/linear/polynomial).
    pub lr_end: f64,
    /// Warmup steps.
    pub warmup_steps: usize,
    /// Total optimizer steps.
    pub total_steps: usize,
    /// Polynomial power.
    pub power: f64,
    /// Cosine cycles (restarts).
    pub num_cycles: f64,
}

impl LrSchedule {
    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if self.kind == LrSchedulerType::Constant {
            return self.learning_rate;
        }
        if step < self.warmup_steps {
            let f = step as f64 / self.warmup_steps as f64;
            return self.warmup_lr_init + (self.learning_rate - self.warmup_lr_init) * f;
        }
        let decay = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let p = ((step - self.warmup_steps) as f64 / decay).min(1.0);
        let span = self.learning_rate - self.lr_end;
        match self.kind {
            LrSchedulerType::Constant | LrSchedulerType::ConstantWithWarmup => self.learning_rate,
            LrSchedulerType::Linear => self.lr_end + span * (1.0 - p),
            LrSchedulerType::Cosine => {
                self.lr_end + span * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            LrSchedulerType::Polynomial => self.lr_end + span * (1.0 - p).powf(self.power),
            LrSchedulerType::CosineWithRestarts => {
                if p >= 1.0 {
                    return self.lr_end;
                }
                let c = (self.num_cycles * p) % 1.0;
                self.lr_end + span * 0.5 * (1.0 + (std::f64::consts::PI * c).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: LrSchedulerType) -> LrSchedule {
        LrSchedule {
            kind,
            learning_rate: 1e-3,
            warmup_lr_init: 0.0,
            lr_end: 1e-5,
            warmup_steps: 10,
            total_steps: 110,
            power: 2.0,
            num_cycles: 2.0,
        }
    }

    #[test]
    fn values_at_chosen_steps() {
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        let c = sched(LrSchedulerType::Cosine);
        close(c.lr(0), 0.0);
        close(c.lr(5), 5e-4);
        close(c.lr(10), 1e-3);
        close(c.lr(60), 1e-5 + (1e-3 - 1e-5) * 0.5);
        close(c.lr(110), 1e-5);
        close(c.lr(500), 1e-5);
        let l = sched(LrSchedulerType::Linear);
        close(l.lr(35), 1e-5 + (1e-3 - 1e-5) * 0.75);
        let p = sched(LrSchedulerType::Polynomial);
        close(p.lr(60), 1e-5 + (1e-3 - 1e-5) * 0.25);
        close(sched(LrSchedulerType::Constant).lr(0), 1e-3);
        let cw = sched(LrSchedulerType::ConstantWithWarmup);
        close(cw.lr(5), 5e-4);
        close(cw.lr(100), 1e-3);
        let r = sched(LrSchedulerType::CosineWithRestarts);
        close(r.lr(60), 1e-3); // the second cycle starts at the peak again
        close(r.lr(35), 1e-5 + (1e-3 - 1e-5) * 0.5);
        assert!("cosine_annealing".parse::<LrSchedulerType>().is_err());
    }
}
