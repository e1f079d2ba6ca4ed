//! Attention of one new position over a KV cache, the decode step's attention: for each query
//! head `softmax(q · Kᵀ / √d) · V` over the cached keys, in one parallel region.
//!
//! libtorch's fused CPU attention handles one query row as a general block: per head it calls
//! MKL twice (q·Kᵀ and p·V, a GEMV each) and allocates its buffers, ~3% of a GPT-2 decode step
//! on the project's hosts, and the caller adds the ops that pick q/k/v out of the fused
//! projection. Here q is read where the projection left it (any strides), keys and values
//! where the cache holds them, and the output is written in the `[b, heads, 1, d]` layout the
//! output projection reads as `[b, 1, heads · d]` without a copy.
use tch::{Device, Kind, Tensor};

use super::{grad_mode, pool, Addr, Simd, ENABLED, PARALLEL_BYTES};

/// `softmax(q·kᵀ/√d + mask)·v` for `q [b, hq, 1, d]` against `k`, `v [b, hk, len, d]` (`hq` a
/// multiple of `hk`: grouped-query heads read kv head `h / (hq / hk)`, as libtorch's
/// `enable_gqa`), with an optional boolean `mask [b or 1, 1, 1, len]` (false: not attended).
/// Applies on the CPU to f32 or bf16 tensors that need no gradient, whose last dimension is
/// contiguous and whose keys and values are rows of `d` (a cache's narrowed buffer is);
/// `None` leaves it to libtorch.
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Option<Tensor> {
    if !ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    decode_attention_with(super::best_simd()?, q, k, v, mask)
}

/// [`decode_attention`] with a chosen instruction set; `None` also where this CPU lacks it.
pub fn decode_attention_with(
    simd: Simd,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Option<Tensor> {
    if !super::runs_here(simd) {
        return None;
    }
    let kind = q.kind();
    if !matches!(kind, Kind::Float | Kind::BFloat16)
        || [q, k, v]
            .iter()
            .any(|t| t.kind() != kind || t.device() != Device::Cpu || t.dim() != 4)
    {
        return None;
    }
    if [q, k, v].iter().any(|t| t.requires_grad()) && grad_mode() {
        return None;
    }
    let (qs, ks) = (q.size(), k.size());
    let &[b, hq, 1, d] = qs.as_slice() else {
        return None;
    };
    let &[kb, hk, len, kd] = ks.as_slice() else {
        return None;
    };
    if v.size() != ks || kb != b || kd != d || hk == 0 || hq % hk != 0 || len == 0 || d == 0 {
        return None;
    }
    let (qst, kst, vst) = (q.stride(), k.stride(), v.stride());
    if qst[3] != 1 || kst[3] != 1 || kst[2] != d || vst[3] != 1 || vst[2] != d {
        return None;
    }
    let mask = match mask {
        None => None,
        Some(m) => {
            let &[mb, 1, 1, ml] = m.size().as_slice() else {
                return None;
            };
            if m.kind() != Kind::Bool
                || m.device() != Device::Cpu
                || !m.is_contiguous()
                || !(mb == b || mb == 1)
                || ml != len
            {
                return None;
            }
            // SAFETY: a contiguous CPU bool tensor of `mb · len` elements.
            let keep = unsafe {
                std::slice::from_raw_parts(m.data_ptr() as *const bool, (mb * len) as usize)
            };
            // A row with no key to attend is libtorch's to define.
            if keep.chunks(len as usize).any(|row| !row.contains(&true)) {
                return None;
            }
            Some((Addr(m.data_ptr() as usize), mb > 1))
        }
    };
    let out = Tensor::f_empty([b, hq, 1, d], (Kind::Float, Device::Cpu)).ok()?;
    let (b, hq, hk, len, d) = (
        b as usize,
        hq as usize,
        hk as usize,
        len as usize,
        d as usize,
    );
    let job = Attend {
        q: Addr(q.data_ptr() as usize),
        k: Addr(k.data_ptr() as usize),
        v: Addr(v.data_ptr() as usize),
        out: Addr(out.data_ptr() as usize),
        mask,
        b,
        qs: [qst[0] as usize, qst[1] as usize],
        ks: [kst[0] as usize, kst[1] as usize],
        vs: [vst[0] as usize, vst[1] as usize],
        hq,
        hk,
        len,
        d,
    };
    let bytes = 2 * b * hk * len * d * kind.elt_size_in_bytes();
    let parts = if bytes < PARALLEL_BYTES {
        1
    } else {
        pool::threads().min(b * hk)
    };
    // SAFETY: the sizes and strides were checked above; every pointer is a live CPU buffer
    // for the duration of the call; `simd` is on this CPU.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match kind {
            Kind::BFloat16 => run::<u16>(simd, &job, parts),
            _ => run::<f32>(simd, &job, parts),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (job, parts);
        return None;
    }
    if kind == Kind::Float {
        Some(out)
    } else {
        out.f_to_kind(kind).ok()
    }
}

/// One call's pointers and sizes; strides are in elements, `[batch, head]`.
struct Attend {
    q: Addr,
    k: Addr,
    v: Addr,
    out: Addr,
    mask: Option<(Addr, bool)>,
    b: usize,
    qs: [usize; 2],
    ks: [usize; 2],
    vs: [usize; 2],
    hq: usize,
    hk: usize,
    len: usize,
    d: usize,
}

/// Splits the `b · hk` kv heads over `parts` threads, claimed dynamically; each does the
/// query heads that read it.
///
/// # Safety
/// As [`decode_attention_with`] checked.
#[cfg(target_arch = "x86_64")]
unsafe fn run<E: super::simd::Elem>(simd: Simd, a: &Attend, parts: usize) {
    use super::simd::{attend_avx2, attend_avx512, Head};
    let units = a.b * a.hk;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let group = a.hq / a.hk;
    pool::run(parts, &|_| {
        let mut scores = vec![0f32; a.len];
        let mut q = vec![0f32; a.d];
        loop {
            let u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if u >= units {
                break;
            }
            let (bi, kh) = (u / a.hk, u % a.hk);
            let keep = a.mask.map(|(m, per_row)| {
                let row = if per_row { bi * a.len } else { 0 };
                (m.0 as *const bool).wrapping_add(row)
            });
            let k = (a.k.0 as *const E).wrapping_add(bi * a.ks[0] + kh * a.ks[1]);
            let v = (a.v.0 as *const E).wrapping_add(bi * a.vs[0] + kh * a.vs[1]);
            for h in kh * group..(kh + 1) * group {
                let qp = (a.q.0 as *const E).wrapping_add(bi * a.qs[0] + h * a.qs[1]);
                let out = (a.out.0 as *mut f32).wrapping_add((bi * a.hq + h) * a.d);
                // SAFETY: `qp` is `d` elements of this head's query; `k`, `v` are `len` rows
                // of `d`; `out` is this head's `d` outputs, written by this unit only.
                unsafe {
                    for (i, x) in q.iter_mut().enumerate() {
                        *x = (*qp.add(i)).to_f32();
                    }
                    let (q, len, d) = (q.as_ptr(), a.len, a.d);
                    let head = Head {
                        q,
                        k,
                        v,
                        keep,
                        len,
                        d,
                    };
                    match simd {
                        Simd::Avx2 => attend_avx2(head, scores.as_mut_ptr(), out),
                        Simd::Avx512 => attend_avx512(head, scores.as_mut_ptr(), out),
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `q [b, hq, 1, d]` as a strided view out of a fused `[b, 1, (hq + 2·hk) · d]`
    /// projection, and the first `len` positions of `[b, hk, cap, d]` cache buffers.
    fn inputs(b: i64, hq: i64, hk: i64, len: i64, d: i64, kind: Kind) -> (Tensor, Tensor, Tensor) {
        let opts = (Kind::Float, Device::Cpu);
        let fused = Tensor::randn([b, 1, hq + 2 * hk, d], opts).to_kind(kind);
        let q = fused.narrow(2, 0, hq).permute([0, 2, 1, 3]);
        let cap = len + 5;
        let kc = Tensor::randn([b, hk, cap, d], opts).to_kind(kind);
        let vc = Tensor::randn([b, hk, cap, d], opts).to_kind(kind);
        (q, kc.narrow(2, 0, len), vc.narrow(2, 0, len))
    }

    #[test]
    fn matches_libtorch_sdpa_for_heads_masks_and_dtypes() {
        if !crate::kernels::cpu_supported() {
            eprintln!("skipped: this CPU has no AVX2/FMA, the kernels never run here");
            return;
        }
        tch::manual_seed(0);
        let _guard = tch::no_grad_guard();
        // (batch, query heads, kv heads, cached positions, head dim): MHA, GQA, and head
        // dims that leave a tail after the AVX2 and AVX-512 registers.
        let shapes = [
            (1, 12, 12, 37, 64),
            (3, 8, 2, 300, 64),
            (2, 4, 4, 9, 20),
            (1, 6, 3, 70, 72),
        ];
        for simd in Simd::supported() {
            for kind in [Kind::Float, Kind::BFloat16] {
                for &(b, hq, hk, len, d) in &shapes {
                    let (q, k, v) = inputs(b, hq, hk, len, d, kind);
                    let pad = Tensor::ones([b, 1, 1, len], (Kind::Bool, Device::Cpu));
                    // Row 0 keeps only its last key; the others lose their first two.
                    let _ = pad.get(0).narrow(-1, 0, len - 1).fill_(0);
                    for b_row in 1..b {
                        let _ = pad.get(b_row).narrow(-1, 0, 2).fill_(0);
                    }
                    for mask in [None, Some(&pad)] {
                        let got = decode_attention_with(simd, &q, &k, &v, mask)
                            .unwrap_or_else(|| panic!("applies to {:?}", (b, hq, hk, len, d)));
                        let want = Tensor::scaled_dot_product_attention(
                            &q.to_kind(Kind::Float),
                            &k.to_kind(Kind::Float),
                            &v.to_kind(Kind::Float),
                            mask,
                            0.0,
                            false,
                            None,
                            hq != hk,
                        );
                        assert_eq!(got.size(), [b, hq, 1, d]);
                        assert_eq!(got.kind(), kind);
                        let err = (got.to_kind(Kind::Float) - &want)
                            .abs()
                            .max()
                            .double_value(&[]);
                        let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
                        assert!(
                            err <= tol,
                            "{simd:?} {kind:?} {:?} mask {}: {err}",
                            (b, hq, hk, len, d),
                            mask.is_some()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn leaves_what_it_does_not_cover_to_libtorch() {
        let Some(simd) = crate::kernels::best_simd() else {
            eprintln!("skipped: this CPU has no AVX2/FMA, the kernels never run here");
            return;
        };
        let (q, k, v) = inputs(1, 4, 4, 10, 16, Kind::Float);
        // Two query rows (prefill), a fully masked row, a float mask, a gradient.
        let q2 = Tensor::randn([1, 4, 2, 16], (Kind::Float, Device::Cpu));
        assert!(decode_attention_with(simd, &q2, &k, &v, None).is_none());
        let none = Tensor::zeros([1, 1, 1, 10], (Kind::Bool, Device::Cpu));
        assert!(decode_attention_with(simd, &q, &k, &v, Some(&none)).is_none());
        let additive = Tensor::zeros([1, 1, 1, 10], (Kind::Float, Device::Cpu));
        assert!(decode_attention_with(simd, &q, &k, &v, Some(&additive)).is_none());
        let qg = q.detach().copy().set_requires_grad(true);
        assert!(decode_attention_with(simd, &qg, &k, &v, None).is_none());
        // Three kv heads do not divide four query heads.
        let (_, k3, v3) = inputs(1, 3, 3, 10, 16, Kind::Float);
        assert!(decode_attention_with(simd, &q, &k3, &v3, None).is_none());
    }
}
