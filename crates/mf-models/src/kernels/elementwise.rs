//! The small per-token operations of a decode step, written out in Rust: at batch 1-8 each
//! of them is a few microseconds of libtorch dispatch (an RMSNorm is five or six ops, a
//! rotary embedding seven) around nanoseconds of arithmetic, and a LLaMA step has dozens.
//! They apply under the same conditions as the matrix products (CPU, f32 or bf16, at most
//! [`super::MAX_ROWS`] rows, no gradient needed) and round like libtorch's op sequence.
use half::bf16;
use tch::{Device, Kind, Tensor};

use super::{grad_mode, MAX_ROWS};

/// Reads a contiguous CPU tensor of `kind` (f32 or bf16) as f32 values.
fn read(t: &Tensor, kind: Kind) -> Vec<f32> {
    let n = t.numel();
    // SAFETY: callers pass contiguous CPU tensors of `kind` with `n` elements.
    unsafe {
        match kind {
            Kind::BFloat16 => std::slice::from_raw_parts(t.data_ptr() as *const bf16, n)
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            _ => std::slice::from_raw_parts(t.data_ptr() as *const f32, n).to_vec(),
        }
    }
}

/// A new tensor of `kind` and `size` holding `values` (rounded to bf16 for bf16).
fn write(values: &[f32], size: &[i64], kind: Kind) -> Option<Tensor> {
    let out = Tensor::f_empty(size, (kind, Device::Cpu)).ok()?;
    // SAFETY: `out` is a fresh contiguous CPU tensor of `values.len()` elements of `kind`.
    unsafe {
        match kind {
            Kind::BFloat16 => {
                let o = std::slice::from_raw_parts_mut(out.data_ptr() as *mut bf16, values.len());
                o.iter_mut()
                    .zip(values)
                    .for_each(|(o, v)| *o = bf16::from_f32(*v));
            }
            _ => std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, values.len())
                .copy_from_slice(values),
        }
    }
    Some(out)
}

/// Rounds to the precision of `kind`, as a libtorch op producing `kind` would.
fn round(v: f32, kind: Kind) -> f32 {
    if kind == Kind::BFloat16 {
        bf16::from_f32(v).to_f32()
    } else {
        v
    }
}

/// Whether `ts` are CPU tensors of one kernel dtype, contiguous, and need no gradient.
fn applies(ts: &[&Tensor]) -> Option<Kind> {
    if !super::ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let kind = ts.first()?.kind();
    if !matches!(kind, Kind::Float | Kind::BFloat16)
        || ts
            .iter()
            .any(|t| t.kind() != kind || t.device() != Device::Cpu || !t.is_contiguous())
    {
        return None;
    }
    if ts.iter().any(|t| t.requires_grad()) && grad_mode() {
        return None;
    }
    Some(kind)
}

/// `weight · (x · rsqrt(mean(x²) + eps))` over the last dimension, the statistics in f32 and
/// the normalised value cast to `x`'s dtype before the weight is applied (transformers'
/// `LlamaRMSNorm`), for at most `MAX_ROWS` rows. `None` leaves it to libtorch.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Option<Tensor> {
    let kind = applies(&[x, weight])?;
    let size = x.size();
    let d = *size.last()? as usize;
    if d == 0 || weight.dim() != 1 || weight.numel() != d || x.numel() > MAX_ROWS * d {
        return None;
    }
    let (xs, w) = (read(x, kind), read(weight, kind));
    let mut out = vec![0f32; xs.len()];
    for (row, o) in xs.chunks(d).zip(out.chunks_mut(d)) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (mean + eps as f32).sqrt();
        o.iter_mut()
            .zip(row)
            .zip(&w)
            .for_each(|((o, v), w)| *o = w * round(v * r, kind));
    }
    write(&out, &size, kind)
}

/// [`crate::layers::apply_rotary`] (`x · cos + rotate_half(x) · sin`) for `x [b, heads, t,
/// dim]` and tables `[b, 1, t, dim]`, at most `MAX_ROWS` positions: the same three rounded
/// operations per element as libtorch's, so the result is identical. `None` leaves it to
/// libtorch.
pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Option<Tensor> {
    let kind = applies(&[x, cos, sin])?;
    let size = x.size();
    let &[b, heads, t, dim] = size.as_slice() else {
        return None;
    };
    if cos.size() != [b, 1, t, dim] || sin.size() != [b, 1, t, dim] {
        return None;
    }
    if dim == 0 || dim % 2 != 0 || (b * t) as usize > MAX_ROWS {
        return None;
    }
    let (xs, c, s) = (read(x, kind), read(cos, kind), read(sin, kind));
    let (heads, t, dim) = (heads as usize, t as usize, dim as usize);
    let half = dim / 2;
    let mut out = vec![0f32; xs.len()];
    for (idx, (row, o)) in xs.chunks(dim).zip(out.chunks_mut(dim)).enumerate() {
        // Row `idx` is (batch, head, position); the tables have no head dimension.
        let (bi, pos) = (idx / (heads * t), idx % t);
        let table = (bi * t + pos) * dim;
        let (c, s) = (&c[table..table + dim], &s[table..table + dim]);
        for i in 0..dim {
            let rotated = if i < half {
                -row[i + half]
            } else {
                row[i - half]
            };
            *o.get_mut(i)? = round(
                round(row[i] * c[i], kind) + round(rotated * s[i], kind),
                kind,
            );
        }
    }
    write(&out, &size, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms_reference(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let y = xf * (var + eps).rsqrt();
        w * y.to_kind(x.kind())
    }

    fn rotary_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let rotated = Tensor::cat(
            &[&x.narrow(-1, half, half).neg(), &x.narrow(-1, 0, half)],
            -1,
        );
        x * cos + rotated * sin
    }

    #[test]
    fn rms_norm_matches_libtorch() {
        tch::manual_seed(0);
        let opts = (Kind::Float, Device::Cpu);
        for kind in [Kind::Float, Kind::BFloat16] {
            for shape in [vec![1, 1, 768], vec![8, 1, 13], vec![3, 64]] {
                let d = *shape.last().unwrap();
                let x = (Tensor::randn(shape.as_slice(), opts) * 3.0).to_kind(kind);
                let w = Tensor::randn([d], opts).to_kind(kind);
                let got = rms_norm(&x, &w, 1e-5).expect("applies");
                let want = rms_reference(&x, &w, 1e-5);
                assert_eq!(got.size(), want.size());
                assert_eq!(got.kind(), kind);
                let err = (got.to_kind(Kind::Float) - want.to_kind(Kind::Float))
                    .abs()
                    .max()
                    .double_value(&[]);
                // f32: summation order; bf16: one rounding step of a value near the scale.
                let tol = if kind == Kind::Float { 1e-5 } else { 0.05 };
                assert!(err <= tol, "{kind:?} {shape:?}: {err}");
            }
        }
    }

    #[test]
    fn rotary_is_identical_to_libtorch() {
        tch::manual_seed(0);
        let opts = (Kind::Float, Device::Cpu);
        for kind in [Kind::Float, Kind::BFloat16] {
            for (b, heads, t, dim) in [(1, 12, 1, 64), (2, 4, 3, 8), (8, 2, 1, 128)] {
                let x = Tensor::randn([b, heads, t, dim], opts).to_kind(kind);
                let cos = Tensor::randn([b, 1, t, dim], opts).to_kind(kind);
                let sin = Tensor::randn([b, 1, t, dim], opts).to_kind(kind);
                let got = rotary(&x, &cos, &sin).expect("applies");
                assert!(
                    got.equal(&rotary_reference(&x, &cos, &sin)),
                    "{kind:?} {b}x{heads}x{t}x{dim}"
                );
            }
        }
    }

    #[test]
    fn gradients_and_long_inputs_go_to_libtorch() {
        let opts = (Kind::Float, Device::Cpu);
        let w = Tensor::ones([16], opts).set_requires_grad(true);
        let x = Tensor::randn([2, 16], opts);
        assert!(rms_norm(&x, &w, 1e-5).is_none(), "autograd is recording");
        assert!(tch::no_grad(|| rms_norm(&x, &w, 1e-5)).is_some());
        let long = Tensor::randn([MAX_ROWS as i64 + 1, 16], opts);
        assert!(tch::no_grad(|| rms_norm(&long, &w, 1e-5)).is_none());
        let x = Tensor::randn([1, 2, MAX_ROWS as i64 + 1, 8], opts);
        let cs = Tensor::randn([1, 1, MAX_ROWS as i64 + 1, 8], opts);
        assert!(rotary(&x, &cs, &cs).is_none());
        // Tables with the wrong shape are libtorch's to broadcast or reject.
        let x = Tensor::randn([1, 2, 1, 8], opts);
        assert!(rotary(&x, &Tensor::randn([1, 1, 1, 4], opts), &cs).is_none());
    }
}
