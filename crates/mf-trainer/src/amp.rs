//! Mixed precision: which dtype the model trains in, and fp16's dynamic loss scale.
//!
//! tch has no CPU autocast, so bf16/fp16 training here is Megatron-style: the model's weights
//! and activations are bf16 (or f16), the next-token loss is computed from f32 logits, and the
//! optimizer updates f32 master weights that it rounds back into the model after every step.
//! Before and after `train()` the model is f32 with the master values, as with autocast.
use serde::{Deserialize, Serialize};

use crate::args::TrainingArguments;

/// fp16's dynamic loss scale (MindFormers' `DynamicLossScaleUpdateCell`, torch's `GradScaler`):
/// the loss is multiplied by `scale` before backward so small f16 gradients do not flush to
/// zero; a step whose gradients overflow is skipped and the scale is divided by
/// `scale_factor`; after `scale_window` good steps in a row it is multiplied by `scale_factor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// Current scale.
    pub scale: f64,
    /// Growth / backoff factor.
    pub scale_factor: f64,
    /// Good steps before the scale grows.
    pub scale_window: usize,
    /// Good steps since the last change.
    pub good_steps: usize,
    /// Steps skipped because gradients overflowed.
    pub skipped_steps: usize,
}

impl LossScaler {
    /// The scaler `loss_scale_value`, `loss_scale_factor` and `loss_scale_window` describe.
    pub fn from_args(args: &TrainingArguments) -> Self {
        LossScaler {
            scale: args.loss_scale_value,
            scale_factor: args.loss_scale_factor,
            scale_window: args.loss_scale_window,
            good_steps: 0,
            skipped_steps: 0,
        }
    }

    /// Records a step's outcome; returns whether the optimizer may apply it.
    pub fn update(&mut self, grads_finite: bool) -> bool {
        if !grads_finite {
            self.scale = (self.scale / self.scale_factor).max(1.0);
            self.good_steps = 0;
            self.skipped_steps += 1;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= self.scale_window {
            self.scale *= self.scale_factor;
            self.good_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_on_overflow_and_grows_after_a_window() {
        let mut s = LossScaler::from_args(&TrainingArguments {
            loss_scale_value: 1024.0,
            loss_scale_factor: 2.0,
            loss_scale_window: 3,
            ..Default::default()
        });
        assert!(!s.update(false));
        assert_eq!((s.scale, s.skipped_steps), (512.0, 1));
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale, 512.0);
        assert!(s.update(true));
        assert_eq!((s.scale, s.good_steps), (1024.0, 0));
        s.scale = 1.0;
        s.update(false);
        assert_eq!(s.scale, 1.0, "the scale never drops below 1");
    }
}
