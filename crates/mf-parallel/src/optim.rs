//! The optimizer of the parallel runtime: the same update rules as the Trainer's optimizer
//! (AdamW, Adam, SGD; no decay on 1-D parameters), applied to flat gradient buckets. Without
//! optimizer sharding every data-parallel rank updates whole buckets; with it (ZeRO-1) each
//! rank holds the moments of and updates only its `1/dp` slice of every bucket, and the
//! updated slices are all-gathered into the parameters.
use std::ops::Range;

use mf_core::{invalid, Result};
use tch::{Kind, Tensor};

/// Optimizer hyperparameters (TrainingArguments' names).
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerOptions {
    /// `adamw`, `adam` or `sgd`.
    pub optim: String,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Weight decay (decoupled for AdamW, L2 for Adam and SGD).
    pub weight_decay: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    AdamW,
    Adam,
    Sgd,
}

/// One bucket's optimizer state for the slice this rank updates.
pub struct BucketState {
    /// The rank's element range of the (padded) flat bucket.
    pub slice: Range<i64>,
    /// f32 parameter values of the slice.
    pub values: Tensor,
    /// 1 where weight decay applies.
    pub decay: Tensor,
    /// 1 for elements this rank counts in the global gradient norm (each element is counted
    /// by exactly one rank of the world).
    pub norm_mask: Tensor,
    /// Adam first moments of the slice.
    pub exp_avg: Tensor,
    /// Adam second moments of the slice.
    pub exp_avg_sq: Tensor,
}

/// The update rule over bucket slices.
pub struct FlatOptimizer {
    rule: Rule,
    opts: OptimizerOptions,
    /// Updates done.
    pub step: usize,
}

impl FlatOptimizer {
    /// Checks the optimizer name.
    pub fn new(opts: &OptimizerOptions) -> Result<Self> {
        let rule = match opts.optim.as_str() {
            "adamw" => Rule::AdamW,
            "adam" => Rule::Adam,
            "sgd" => Rule::Sgd,
            other => {
                return Err(invalid(format!(
                    "optim '{other}': expected adamw, adam or sgd"
                )))
            }
        };
        Ok(FlatOptimizer {
            rule,
            opts: opts.clone(),
            step: 0,
        })
    }

    /// Starts a new update: the bias corrections of every bucket use this step count.
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// Updates one bucket slice with its (reduced, unscaled, clipped) gradient `g`.
    pub fn update(&self, st: &mut BucketState, g: &Tensor, lr: f64) {
        let _g = tch::no_grad_guard();
        let (b1, b2) = (self.opts.beta1, self.opts.beta2);
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let wd = self.opts.weight_decay;
        let p = &mut st.values;
        match self.rule {
            Rule::Sgd => {
                let upd = if wd > 0.0 {
                    g + &*p * &st.decay * wd
                } else {
                    g.shallow_clone()
                };
                let _ = p.g_add_(&(upd * -lr));
            }
            Rule::Adam | Rule::AdamW => {
                let g = if self.rule == Rule::Adam && wd > 0.0 {
                    g + &*p * &st.decay * wd
                } else {
                    g.shallow_clone()
                };
                if self.rule == Rule::AdamW && wd > 0.0 {
                    let keep = (&st.decay * (-lr * wd)) + 1.0;
                    let _ = p.g_mul_(&keep);
                }
                let _ = st.exp_avg.lerp_(&g, 1.0 - b1);
                let _ = st.exp_avg_sq.g_mul_scalar_(b2);
                let _ = st.exp_avg_sq.addcmul_(&g, &g.g_mul_scalar(1.0 - b2));
                let denom = (st.exp_avg_sq.sqrt() / bc2.sqrt()) + self.opts.eps;
                let _ = p.addcdiv_(&(&st.exp_avg * (-lr / bc1)), &denom);
            }
        }
    }

    /// Whether the rule keeps moments.
    pub fn has_moments(&self) -> bool {
        self.rule != Rule::Sgd
    }
}

/// A flat f32 concatenation of `tensors`, zero-padded to `len` elements.
pub fn flatten(tensors: &[Tensor], len: i64) -> Tensor {
    let parts: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.reshape([-1]).to_kind(Kind::Float))
        .collect();
    let flat = Tensor::cat(&parts, 0);
    let n = flat.size()[0];
    if n < len {
        Tensor::cat(
            &[
                flat,
                Tensor::zeros([len - n], (Kind::Float, tch::Device::Cpu))
                    .to_device(parts_device(&parts)),
            ],
            0,
        )
    } else {
        flat
    }
}

fn parts_device(parts: &[Tensor]) -> tch::Device {
    parts.first().map_or(tch::Device::Cpu, |t| t.device())
}

/// Splits a flat tensor back into tensors of `shapes` (padding ignored).
pub fn unflatten(flat: &Tensor, shapes: &[Vec<i64>]) -> Vec<Tensor> {
    let mut off = 0;
    shapes
        .iter()
        .map(|s| {
            let n: i64 = s.iter().product();
            let t = flat.narrow(0, off, n).reshape(s.as_slice());
            off += n;
            t
        })
        .collect()
}
