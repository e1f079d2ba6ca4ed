//! Optimizers written over tensors, so their state can be saved and resumed exactly
//! (libtorch's C++ optimizers keep their state out of reach from Rust).
use mf_core::{invalid, MfError, Result};
use tch::{Kind, Tensor};

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimKind {
    /// Adam with decoupled weight decay (Loshchilov & Hutter).
    AdamW,
    /// Adam with L2 weight decay added to the gradient.
    Adam,
    /// Plain stochastic gradient descent with L2 weight decay.
    Sgd,
}

/// An optimizer over named parameters; 1-D parameters (biases, norm weights) get no decay.
///
/// Mixed precision ([`Optimizer::with_master_weights`]): the model's parameters are bf16/f16 and
/// carry the gradients; the optimizer keeps f32 master copies, updates those, and writes them
/// back rounded into the model, so small updates are not lost to bf16 rounding.
pub struct Optimizer {
    kind: OptimKind,
    /// What the update rule changes: the model's parameters, or their f32 masters.
    params: Vec<(String, Tensor)>,
    /// The model's parameters: where gradients are read and (mixed precision) results written.
    model: Vec<Tensor>,
    mixed: bool,
    grad_scale: f64,
    decay: Vec<bool>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Optimizer steps taken.
    pub step: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl Optimizer {
    /// Builds the optimizer named by `optim` (`adamw`, `adam`, `sgd`).
    pub fn new(
        optim: &str,
        params: Vec<(String, Tensor)>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let kind = match optim {
            "adamw" => OptimKind::AdamW,
            "adam" => OptimKind::Adam,
            "sgd" => OptimKind::Sgd,
            other => {
                return Err(invalid(format!(
                    "optim '{other}': expected adamw, adam or sgd"
                )))
            }
        };
        let decay = params.iter().map(|(_, p)| p.dim() > 1).collect();
        let zeros = |p: &Tensor| Tensor::zeros_like(p).to_kind(Kind::Float);
        let (exp_avg, exp_avg_sq) = if kind == OptimKind::Sgd {
            (Vec::new(), Vec::new())
        } else {
            (
                params.iter().map(|(_, p)| zeros(p)).collect(),
                params.iter().map(|(_, p)| zeros(p)).collect(),
            )
        };
        let model = params.iter().map(|(_, p)| p.shallow_clone()).collect();
        Ok(Optimizer {
            kind,
            params,
            model,
            mixed: false,
            grad_scale: 1.0,
            decay,
            exp_avg,
            exp_avg_sq,
            step: 0,
            beta1,
            beta2,
            eps,
            weight_decay,
        })
    }

    /// Like [`Optimizer::new`] for a model whose parameters are bf16/f16: the update runs on
    /// f32 master copies made here from the model's current values.
    pub fn with_master_weights(
        optim: &str,
        params: Vec<(String, Tensor)>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let model: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
        let masters = params
            .into_iter()
            .map(|(n, p)| (n, p.detach().to_kind(Kind::Float).copy()))
            .collect();
        let mut o = Self::new(optim, masters, beta1, beta2, eps, weight_decay)?;
        o.model = model;
        o.mixed = true;
        Ok(o)
    }

    /// Bytes held by the optimizer's own state (moments and f32 masters).
    pub fn state_bytes(&self) -> usize {
        let moments: usize = self
            .exp_avg
            .iter()
            .chain(&self.exp_avg_sq)
            .map(|t| t.numel() * 4)
            .sum();
        let masters: usize = if self.mixed {
            self.params.iter().map(|(_, t)| t.numel() * 4).sum()
        } else {
            0
        };
        moments + masters
    }

    /// The tensors the update rule changes (f32 masters under mixed precision).
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Gradients are read divided by this (the loss scale of fp16 training).
    pub fn set_grad_scale(&mut self, scale: f64) {
        self.grad_scale = scale;
    }

    /// Writes the f32 masters into the model's parameters (after the model went back to f32,
    /// this makes it exactly the trained weights).
    pub fn copy_masters_to_model(&self) {
        let _g = tch::no_grad_guard();
        if self.mixed {
            for (m, (_, p)) in self.model.iter().zip(&self.params) {
                let mut m = m.shallow_clone();
                m.copy_(p);
            }
        }
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.model {
            p.zero_grad();
        }
    }

    /// The unscaled f32 gradient of parameter `i`, if it has one.
    fn grad(&self, i: usize) -> Option<Tensor> {
        let g = self.model[i].grad();
        if !g.defined() {
            return None;
        }
        let g = g.to_kind(Kind::Float);
        Some(if self.grad_scale != 1.0 {
            g / self.grad_scale
        } else {
            g
        })
    }

    /// L2 norm over all (unscaled) gradients; not finite when any gradient overflowed.
    pub fn grad_norm(&self) -> f64 {
        let _g = tch::no_grad_guard();
        let sq: f64 = (0..self.model.len())
            .filter_map(|i| self.grad(i))
            .map(|g| g.pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]))
            .sum();
        sq.sqrt()
    }

    /// Scales gradients so their global norm is at most `max_norm` (torch's clip_grad_norm_);
    /// returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        self.clip_to(norm, max_norm);
        norm
    }

    /// Clipping with the norm already computed by [`Optimizer::grad_norm`].
    pub fn clip_to(&mut self, norm: f64, max_norm: f64) {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            let _g = tch::no_grad_guard();
            for p in &self.model {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(coef);
                }
            }
        }
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        let _g = tch::no_grad_guard();
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for i in 0..self.params.len() {
            let Some(g) = self.grad(i) else {
                continue;
            };
            let p = &mut self.params[i].1;
            let wd = if self.decay[i] {
                self.weight_decay
            } else {
                0.0
            };
            match self.kind {
                OptimKind::Sgd => {
                    let upd = if wd > 0.0 { &g + &*p * wd } else { g };
                    let _ = p.g_add_(&(upd * -lr));
                }
                OptimKind::Adam | OptimKind::AdamW => {
                    let g = if self.kind == OptimKind::Adam && wd > 0.0 {
                        &g + &*p * wd
                    } else {
                        g
                    };
                    if self.kind == OptimKind::AdamW && wd > 0.0 {
                        let _ = p.g_mul_scalar_(1.0 - lr * wd);
                    }
                    let m = &mut self.exp_avg[i];
                    let _ = m.lerp_(&g, 1.0 - b1);
                    let v = &mut self.exp_avg_sq[i];
                    let _ = v.g_mul_scalar_(b2);
                    let _ = v.addcmul_(&g, &g.g_mul_scalar(1.0 - b2));
                    let denom = (v.sqrt() / bc2.sqrt()) + self.eps;
                    let _ = p.addcdiv_(&(&*m * (-lr / bc1)), &denom);
                }
            }
            if self.mixed {
                let mut m = self.model[i].shallow_clone();
                m.copy_(p);
            }
        }
    }

    /// State tensors under stable names, for `optimizer.safetensors`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from_slice(&[self.step as i64]))];
        for (i, (name, _)) in self.params.iter().enumerate() {
            if let (Some(m), Some(v)) = (self.exp_avg.get(i), self.exp_avg_sq.get(i)) {
                out.push((format!("{name}.exp_avg"), m.shallow_clone()));
                out.push((format!("{name}.exp_avg_sq"), v.shallow_clone()));
            }
        }
        if self.mixed {
            for (name, p) in &self.params {
                out.push((format!("{name}.master"), p.shallow_clone()));
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state_tensors`].
    pub fn load_state(&mut self, ckpt: &mf_core::checkpoint::SafeTensors) -> Result<()> {
        let origin = ckpt.origin().display().to_string();
        self.step = ckpt.get("step")?.int64_value(&[0]) as usize;
        let _g = tch::no_grad_guard();
        for (i, (name, master)) in self.params.iter_mut().enumerate() {
            let master = self.mixed.then_some(master);
            for (buf, suffix) in [
                (self.exp_avg.get_mut(i), "exp_avg"),
                (self.exp_avg_sq.get_mut(i), "exp_avg_sq"),
                (master, "master"),
            ] {
                if let Some(buf) = buf {
                    let key = format!("{name}.{suffix}");
                    if !ckpt.contains(&key) {
                        return Err(MfError::checkpoint(
                            &origin,
                            format!("optimizer state has no '{key}'"),
                        ));
                    }
                    let src = ckpt.get(&key)?;
                    if src.size() != buf.size() {
                        return Err(MfError::checkpoint(
                            &origin,
                            format!(
                                "optimizer state '{key}' has shape {:?}, expected {:?}",
                                src.size(),
                                buf.size()
                            ),
                        ));
                    }
                    buf.copy_(&src);
                }
            }
        }
        self.copy_masters_to_model();
        Ok(())
    }
}
