//! Normalisation layers.
use mf_core::Result;
use tch::{Kind, Tensor};

use super::params::{Init, Vars};

/// LayerNorm with HF parameter names `weight` and `bias`.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    dim: i64,
}

impl LayerNorm {
    /// A LayerNorm over the last `dim` features (weight 1, bias 0).
    pub fn new(p: &Vars, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: p.var("weight", &[dim as i64], Init::Ones)?,
            bias: p.var("bias", &[dim as i64], Init::Zeros)?,
            eps,
            dim: dim as i64,
        })
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// RMSNorm (LLaMA, T5) with the HF parameter name `weight`.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// An RMSNorm over the last `dim` features (weight 1).
    pub fn new(p: &Vars, dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: p.var("weight", &[dim as i64], Init::Ones)?,
            eps,
        })
    }

    /// Normalises the last dimension. The statistics are taken in f32 and the result is cast
    /// back before the weight is applied, exactly as transformers' `LlamaRMSNorm`, so bf16
    /// and f16 runs round the same way.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(y) = crate::kernels::elementwise::rms_norm(x, &self.weight, self.eps) {
            return y;
        }
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let y = xf * (var + self.eps).rsqrt();
        &self.weight * y.to_kind(x.kind())
    }
}
