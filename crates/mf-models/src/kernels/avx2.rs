//! AVX2 + FMA inner loops of the small-batch products (x86-64, chosen at run time).
//!
//! `M` is the number of input rows (the decode batch, at most [`super::MAX_ROWS`]): each
//! weight vector is loaded once and multiplied into all `M` rows, so the weights stream from
//! memory exactly once per call. Weights are f32 or bf16 (widened to f32 in registers: half
//! the bytes read, f32 arithmetic).
use std::arch::x86_64::*;

/// A weight element: f32, or bf16 as its raw `u16` bits.
pub trait Elem: Copy + Send + Sync + 'static {
    /// Eight consecutive elements as f32 lanes.
    ///
    /// # Safety
    /// `p..p+8` must be readable and the CPU must have AVX2.
    unsafe fn load8(p: *const Self) -> __m256;
    /// One element as f32.
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for u16 {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8(p: *const u16) -> __m256 {
        // bf16 is the top half of an f32: widen and shift.
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }
    #[inline]
    fn to_f32(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// `y[b, r] = Σ_i x[b, i] · w[r, i]` for `r` in `rows` of `w [out, k]` (the `[out, in]`
/// layout), `R` weight rows at a time. `y` has row stride `ldy`.
///
/// # Safety
/// `x` is `[M, k]`, `w` covers `rows` × `k`, `y` is `[M, ldy]` with `ldy ≥ rows.end`, and the
/// CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_rows<W: Elem, const M: usize, const R: usize>(
    x: *const f32,
    k: usize,
    w: *const W,
    rows: std::ops::Range<usize>,
    y: *mut f32,
    ldy: usize,
) {
    let mut r = rows.start;
    while r + R <= rows.end {
        let mut acc = [[_mm256_setzero_ps(); R]; M];
        let mut i = 0;
        while i + 8 <= k {
            let mut wv = [_mm256_setzero_ps(); R];
            for (q, v) in wv.iter_mut().enumerate() {
                *v = W::load8(w.add((r + q) * k + i));
            }
            for (b, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(b * k + i));
                for q in 0..R {
                    a[q] = _mm256_fmadd_ps(wv[q], xv, a[q]);
                }
            }
            i += 8;
        }
        for (b, a) in acc.iter().enumerate() {
            for (q, v) in a.iter().enumerate() {
                let mut t = hsum(*v);
                for j in i..k {
                    t += (*w.add((r + q) * k + j)).to_f32() * *x.add(b * k + j);
                }
                *y.add(b * ldy + r + q) = t;
            }
        }
        r += R;
    }
    if r < rows.end {
        dot_rows::<W, M, 1>(x, k, w, r..rows.end, y, ldy);
    }
}

/// `part[b, :] = Σ_{i ∈ rows} x[b, i] · w[i, :]` for `w [k, n]` (the `[in, out]` layout,
/// GPT-2's Conv1D), four weight rows at a time; `part` is `[M, n]`, zeroed by the caller.
///
/// # Safety
/// `x` is `[M, k]` with `k ≥ rows.end`, `w` is `[k, n]`, `part` is `[M, n]`, and the CPU has
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_rows<W: Elem, const M: usize>(
    x: *const f32,
    k: usize,
    w: *const W,
    n: usize,
    rows: std::ops::Range<usize>,
    part: *mut f32,
) {
    let mut r = rows.start;
    let vec_end = n - n % 8;
    while r < rows.end {
        let q = (rows.end - r).min(4);
        let w0 = w.add(r * n);
        let mut j = 0;
        while j < vec_end {
            if q == 4 {
                let v0 = W::load8(w0.add(j));
                let v1 = W::load8(w0.add(n + j));
                let v2 = W::load8(w0.add(2 * n + j));
                let v3 = W::load8(w0.add(3 * n + j));
                for b in 0..M {
                    let xb = x.add(b * k + r);
                    let yp = part.add(b * n + j);
                    let mut a = _mm256_loadu_ps(yp);
                    a = _mm256_fmadd_ps(v0, _mm256_set1_ps(*xb), a);
                    a = _mm256_fmadd_ps(v1, _mm256_set1_ps(*xb.add(1)), a);
                    a = _mm256_fmadd_ps(v2, _mm256_set1_ps(*xb.add(2)), a);
                    a = _mm256_fmadd_ps(v3, _mm256_set1_ps(*xb.add(3)), a);
                    _mm256_storeu_ps(yp, a);
                }
            } else {
                for s in 0..q {
                    let v = W::load8(w0.add(s * n + j));
                    for b in 0..M {
                        let yp = part.add(b * n + j);
                        let a = _mm256_fmadd_ps(
                            v,
                            _mm256_set1_ps(*x.add(b * k + r + s)),
                            _mm256_loadu_ps(yp),
                        );
                        _mm256_storeu_ps(yp, a);
                    }
                }
            }
            j += 8;
        }
        for s in 0..q {
            for jj in vec_end..n {
                let v = (*w0.add(s * n + jj)).to_f32();
                for b in 0..M {
                    *part.add(b * n + jj) += v * *x.add(b * k + r + s);
                }
            }
        }
        r += q;
    }
}
