//! Rotary position embeddings (RoPE) with the frequency scalings of transformers'
//! `modeling_rope_utils`: linear (position interpolation), dynamic NTK and llama3.
//!
//! Frequencies are computed in f32 with the same operations in the same order as
//! transformers, so cos/sin tables agree to the last bit or nearly so.
use std::f64::consts::PI;

use mf_core::{invalid, Result};
use tch::{Kind, Tensor};

/// How RoPE frequencies are rescaled for contexts longer than pretraining.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// Interpolation factor.
        factor: f64,
    },
    /// Dynamic NTK: past `max_position_embeddings`, the base grows with the sequence length.
    Dynamic {
        /// Scaling factor.
        factor: f64,
        /// Length up to which plain RoPE is used.
        max_position_embeddings: usize,
    },
    /// LLaMA 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Pretraining context length.
        original_max_position_embeddings: usize,
    },
}

/// Cos/sin tables for rotating query and key heads of width `dim`.
#[derive(Debug)]
pub struct RotaryEmbedding {
    dim: usize,
    theta: f64,
    scaling: RopeScaling,
    /// `[dim / 2]` f32; kept in f32 whatever the model dtype, as transformers does.
    inv_freq: Tensor,
}

/// `arange(0, dim, 2) / dim` in f32.
fn exponents(dim: usize, device: tch::Device) -> Tensor {
    Tensor::arange_start_step(0, dim as i64, 2, (Kind::Float, device)) / dim as f64
}

impl RotaryEmbedding {
    /// RoPE over heads of width `dim` with base `theta`.
    pub fn new(dim: usize, theta: f64, scaling: RopeScaling) -> Result<Self> {
        if dim == 0 || !dim.is_multiple_of(2) {
            return Err(invalid(format!(
                "rotary dimension {dim} must be even and positive"
            )));
        }
        if theta.is_nan() || theta <= 0.0 {
            return Err(invalid(format!("rope_theta {theta} must be positive")));
        }
        let dev = tch::Device::Cpu;
        let inv_freq = Tensor::pow_scalar(theta, &exponents(dim, dev)).reciprocal();
        let inv_freq = match &scaling {
            RopeScaling::None | RopeScaling::Dynamic { .. } => inv_freq,
            RopeScaling::Linear { factor } => inv_freq / *factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let wavelen = inv_freq.reciprocal() * (2.0 * PI);
                let scaled = &inv_freq / *factor;
                let llama = scaled.where_self(&wavelen.gt(low_wavelen), &inv_freq);
                let smooth = ((wavelen.reciprocal() * old) - *low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                let smoothed = smooth.rsub_scalar(1.0) * &llama / *factor + &smooth * &llama;
                let medium = wavelen
                    .lt(high_wavelen)
                    .logical_not()
                    .logical_and(&wavelen.gt(low_wavelen).logical_not());
                smoothed.where_self(&medium, &llama)
            }
        };
        Ok(RotaryEmbedding {
            dim,
            theta,
            scaling,
            inv_freq,
        })
    }

    /// Moves the frequency table next to the weights.
    pub fn to_device(&mut self, device: tch::Device) {
        self.inv_freq = self.inv_freq.to_device(device);
    }

    /// The frequencies for a call whose largest position is `max_pos`. Dynamic NTK depends
    /// on it; transformers keeps it as module state, here it is recomputed per call, which
    /// gives the same tables for a fresh model and for incremental decoding.
    fn inv_freq_for(&self, max_pos: impl FnOnce() -> i64) -> Tensor {
        let RopeScaling::Dynamic {
            factor,
            max_position_embeddings,
        } = self.scaling
        else {
            return self.inv_freq.shallow_clone();
        };
        let seq_len = max_pos() + 1;
        if seq_len <= max_position_embeddings as i64 {
            return self.inv_freq.shallow_clone();
        }
        let dev = self.inv_freq.device();
        let d = self.dim as f64;
        // Same f32 ops as transformers' _compute_dynamic_ntk_parameters on a tensor seq_len.
        let s = Tensor::from(seq_len).to_device(dev) * factor;
        let base = ((s / max_position_embeddings as f64) - (factor - 1.0))
            .pow_tensor_scalar(d / (d - 2.0))
            * self.theta;
        base.pow(&exponents(self.dim, dev)).reciprocal()
    }

    /// `(cos, sin)` of shape `[batch, 1, len, dim]` in `kind` for positions `[batch, len]`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let inv_freq = self.inv_freq_for(|| {
            if positions.numel() == 0 {
                0
            } else {
                positions.max().int64_value(&[])
            }
        });
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }

    /// `(cos, sin)` like [`RotaryEmbedding::cos_sin`] with each frequency repeated for the two
    /// features of its pair (`f0 f0 f1 f1 ...`), for [`apply_rotary_interleaved`]. Cast to
    /// `kind` before repeating, as transformers' GLM does.
    pub fn cos_sin_interleaved(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let (cos, sin) = self.cos_sin(positions, kind);
        let half = self.dim as i64 / 2;
        let rep = |t: Tensor| {
            t.narrow(-1, 0, half)
                .repeat_interleave_self_int(2, -1, None)
        };
        (rep(cos), rep(sin))
    }
}

/// Rotates `x` (`[batch, heads, len, dim]`) by the tables from [`RotaryEmbedding::cos_sin`],
/// pairing dimension `i` with `i + dim/2` (the Hugging Face "rotate_half" layout).
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    if let Some(y) = crate::kernels::elementwise::rotary(x, cos, sin) {
        return y;
    }
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
    x * cos + rotated * sin
}

/// Rotates the first `cos.size(-1)` features of `x` (`[batch, heads, len, head_dim]`) in
/// adjacent pairs `(2i, 2i + 1)`, leaving the remaining features as they are: GLM's partial,
/// interleaved rotary layout. `cos`/`sin` are [`RotaryEmbedding::cos_sin_interleaved`] tables
/// of the rotary width.
pub fn apply_rotary_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let hd = x.size().last().copied().unwrap_or(0);
    let rd = cos.size().last().copied().unwrap_or(0).min(hd);
    let xr = x.narrow(-1, 0, rd);
    let pairs = xr.unflatten(-1, [rd / 2, 2]);
    let rotated =
        Tensor::stack(&[pairs.select(-1, 1).neg(), pairs.select(-1, 0)], -1).flatten(-2, -1);
    let y = xr * cos + rotated * sin;
    if rd == hd {
        y
    } else {
        Tensor::cat(&[y, x.narrow(-1, rd, hd - rd)], -1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_keeps_high_and_divides_low_frequencies() {
        let plain = RotaryEmbedding::new(8, 10000.0, RopeScaling::None).unwrap();
        let l3 = RotaryEmbedding::new(
            8,
            10000.0,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 4,
            },
        )
        .unwrap();
        let a = Vec::<f32>::try_from(&plain.inv_freq).unwrap();
        let b = Vec::<f32>::try_from(&l3.inv_freq).unwrap();
        // wavelengths 2π, 20π, 200π, 2000π against the thresholds 1 and 4: all scaled.
        for (x, y) in a.iter().zip(&b) {
            assert!((x / 8.0 - y).abs() < 1e-9, "{x} {y}");
        }
    }

    #[test]
    fn rotation_preserves_norm() {
        let rope = RotaryEmbedding::new(8, 10000.0, RopeScaling::None).unwrap();
        let pos = Tensor::arange(5, (Kind::Int64, tch::Device::Cpu)).unsqueeze(0);
        let (cos, sin) = rope.cos_sin(&pos, Kind::Float);
        let x = Tensor::randn([1, 2, 5, 8], (Kind::Float, tch::Device::Cpu));
        let y = apply_rotary(&x, &cos, &sin);
        let d = (x.norm() - y.norm()).abs().double_value(&[]);
        assert!(d < 1e-4, "{d}");
    }
}
