//! Counter-based dropout: a mask is a pure function of (seed, element index), computed with
//! integer tensor ops (the splitmix64 finaliser). Unlike libtorch's generator, which is global
//! to the process, it needs no lock: rank threads draw in parallel, a recomputed segment
//! redraws the same mask from the same seed, and tensor-parallel ranks that must agree on a
//! replicated region's mask pass the same seed.
use tch::{Device, Kind, Tensor};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const C1: u64 = 0xBF58_476D_1CE4_E5B9;
const C2: u64 = 0x94D0_49BB_1331_11EB;

/// `t >> k` as an unsigned (logical) shift of int64 values.
fn lshr(t: &Tensor, k: i64) -> Tensor {
    t.bitwise_right_shift_tensor_scalar(k)
        .bitwise_and(((1u64 << (64 - k)) - 1) as i64)
}

/// Uniform draws in `[0, 1)` of the given shape (f32), a function of `seed` only.
pub fn hash_uniform(shape: &[i64], seed: u64, device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    // Integer multiplication wraps modulo 2^64, as splitmix64 needs.
    let mut h = Tensor::arange(n, (Kind::Int64, device)) * (GOLDEN as i64)
        + seed.wrapping_mul(GOLDEN) as i64;
    h = h.bitwise_xor_tensor(&lshr(&h, 30)) * (C1 as i64);
    h = h.bitwise_xor_tensor(&lshr(&h, 27)) * (C2 as i64);
    h = h.bitwise_xor_tensor(&lshr(&h, 31));
    (lshr(&h, 11).to_kind(Kind::Double) * (1.0 / (1u64 << 53) as f64))
        .to_kind(Kind::Float)
        .reshape(shape)
}

/// Inverted dropout of `x` with probability `p` and a mask drawn from `seed`.
pub fn hash_dropout(x: &Tensor, p: f64, seed: u64) -> Tensor {
    if p <= 0.0 {
        return x.shallow_clone();
    }
    let keep = hash_uniform(&x.size(), seed, x.device()).ge(p);
    x * keep.to_kind(x.kind()) * (1.0 / (1.0 - p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_uniform_and_repeatable() {
        let u = hash_uniform(&[200_000], 42, Device::Cpu);
        let mean = u.mean(Kind::Double).double_value(&[]);
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert!(u.min().double_value(&[]) >= 0.0 && u.max().double_value(&[]) < 1.0);
        assert_eq!(u, hash_uniform(&[200_000], 42, Device::Cpu));
        let other = hash_uniform(&[200_000], 43, Device::Cpu);
        let same = u
            .eq_tensor(&other)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        assert!(same < 1e-3, "{same}");
        let x = Tensor::ones([100_000], (Kind::Float, Device::Cpu));
        let y = hash_dropout(&x, 0.1, 7);
        let kept = y
            .ne(0.0)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        assert!((kept - 0.9).abs() < 0.01, "{kept}");
        assert!((y.mean(Kind::Double).double_value(&[]) - 1.0).abs() < 0.02);
    }
}
