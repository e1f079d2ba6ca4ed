//! Normalisation layers.
use tch::nn::{Init, Path};
use tch::Tensor;

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
    pub fn new(p: &Path, dim: usize, eps: f64) -> Self {
        LayerNorm {
            weight: p.var("weight", &[dim as i64], Init::Const(1.0)),
            bias: p.var("bias", &[dim as i64], Init::Const(0.0)),
            eps,
            dim: dim as i64,
        }
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
