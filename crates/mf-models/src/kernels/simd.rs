//! The inner loops of the small-batch products (x86-64), written once over an instruction set
//! ([`Isa`]: AVX2 + FMA with 8 f32 lanes, AVX-512F with 16) and chosen at run time.
//!
//! `M` is the number of input rows (the decode batch, at most [`super::MAX_ROWS`]): each
//! weight vector is loaded once and multiplied into all `M` rows, so the weights stream from
//! memory exactly once per call. Weights are f32 or bf16 (widened to f32 in registers: half
//! the bytes read, f32 arithmetic).
use std::arch::x86_64::*;

/// A weight element: f32, or bf16 as its raw `u16` bits.
pub trait Elem: Copy + Send + Sync + 'static {
    /// Whether the element is bf16 (widened on load).
    const BF16: bool;
    /// One element as f32.
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    const BF16: bool = false;
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for u16 {
    const BF16: bool = true;
    #[inline]
    fn to_f32(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }
}

/// How far ahead of its loads a weight stream is prefetched into L2, in bytes. The hardware
/// prefetchers alone leave a 2-core VM's cores short of the read rate of a plain sum when the
/// host is quick (~55-65 GB/s): there the `[out, in]` loop streamed at 0.86 of the probe and
/// at 0.93 with `prefetcht1` 4 KiB ahead; 2 KiB (into L1) and 8-16 KiB were slower
/// (docs/BENCHMARKS.md, "prefetch").
const PREFETCH_AHEAD: usize = 4096;

/// Prefetches into L2 the cache lines `PREFETCH_AHEAD` bytes past `bytes` bytes from `p`,
/// one per 64 bytes. A prefetch past the buffer's end is harmless: it is a hint and never
/// faults, and the address is only computed, never read.
#[inline(always)]
unsafe fn prefetch_ahead<W>(p: *const W, bytes: usize) {
    let p = (p as *const i8).wrapping_add(PREFETCH_AHEAD);
    let mut o = 0;
    while o < bytes {
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(o));
        o += 64;
    }
}

/// The vector operations the loops need, for one instruction set.
///
/// # Safety
/// Every method needs the CPU features of its implementation; the loops are only entered
/// through the `*_avx2` / `*_avx512` functions, which enable them.
pub trait Isa {
    /// A register of [`Isa::LANES`] f32 lanes.
    type V: Copy;
    /// f32 lanes per register.
    const LANES: usize;
    /// All lanes zero.
    unsafe fn zero() -> Self::V;
    /// All lanes `v`.
    unsafe fn splat(v: f32) -> Self::V;
    /// `LANES` f32 from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self::V;
    /// `LANES` weight elements from `p`, as f32.
    unsafe fn load_w<W: Elem>(p: *const W) -> Self::V;
    /// Stores `v` at `p` (unaligned).
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a · b + c`, fused.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a + b`.
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// The sum of the lanes.
    unsafe fn hsum(v: Self::V) -> f32;
}

/// The [`Isa`] methods that are one intrinsic each, for the register type `$v`.
macro_rules! plain_ops {
    ($v:ty, $f:literal, $zero:ident, $splat:ident, $load:ident, $store:ident, $fma:ident, $add:ident) => {
        type V = $v;
        #[inline]
        #[target_feature(enable = $f)]
        unsafe fn zero() -> $v {
            $zero()
        }
        #[inline]
        #[target_feature(enable = $f)]
        unsafe fn splat(v: f32) -> $v {
            $splat(v)
        }
        #[inline]
        #[target_feature(enable = $f)]
        unsafe fn load(p: *const f32) -> $v {
            $load(p)
        }
        #[inline]
        #[target_feature(enable = $f)]
        unsafe fn store(p: *mut f32, v: $v) {
            $store(p, v)
        }
        #[inline]
        #[target_feature(enable = $f)]
        unsafe fn fma(a: $v, b: $v, c: $v) -> $v {
            $fma(a, b, c)
        }
        #[inline]
        #[target_feature(enable = $f)]
        unsafe fn add(a: $v, b: $v) -> $v {
            $add(a, b)
        }
    };
}

/// AVX2 + FMA: 256-bit registers.
pub struct Avx2;

impl Isa for Avx2 {
    const LANES: usize = 8;
    plain_ops!(
        __m256,
        "avx2,fma",
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps
    );
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_w<W: Elem>(p: *const W) -> __m256 {
        if W::BF16 {
            // bf16 is the top half of an f32: widen and shift.
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        } else {
            _mm256_loadu_ps(p as *const f32)
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
}

/// AVX-512F: 512-bit registers (half the instructions per byte of weight, which on the
/// project's hosts streams ~15% faster than AVX2).
pub struct Avx512;

impl Isa for Avx512 {
    const LANES: usize = 16;
    plain_ops!(
        __m512,
        "avx512f",
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps
    );
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_w<W: Elem>(p: *const W) -> __m512 {
        if W::BF16 {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        } else {
            _mm512_loadu_ps(p as *const f32)
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn hsum(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }
}

/// `y[b, r] = Σ_i x[b, i] · w[r, i]` for `r` in `rows` of `w [out, k]` (the `[out, in]`
/// layout). One weight row at a time, `U` registers along it per input row: the weight is
/// read as one sequential stream (interleaving several rows' streams read ~25% slower), and
/// `M · U` independent accumulators keep the FMA pipes busy. `y` has row stride `ldy`.
///
/// # Safety
/// `x` is `[M, k]`, `w` covers `rows` × `k`, `y` is `[M, ldy]` with `ldy ≥ rows.end`, and the
/// CPU has `I`'s features.
#[inline(always)]
unsafe fn dot_rows<I: Isa, W: Elem, const M: usize, const U: usize>(
    x: *const f32,
    k: usize,
    w: *const W,
    rows: std::ops::Range<usize>,
    y: *mut f32,
    ldy: usize,
) {
    let step = I::LANES * U;
    for r in rows {
        let wr = w.add(r * k);
        let mut acc = [[I::zero(); U]; M];
        let mut i = 0;
        while i + step <= k {
            prefetch_ahead(wr.add(i), step * std::mem::size_of::<W>());
            for u in 0..U {
                let j = i + u * I::LANES;
                let wv = I::load_w(wr.add(j));
                for (b, a) in acc.iter_mut().enumerate() {
                    a[u] = I::fma(wv, I::load(x.add(b * k + j)), a[u]);
                }
            }
            i += step;
        }
        while i + I::LANES <= k {
            let wv = I::load_w(wr.add(i));
            for (b, a) in acc.iter_mut().enumerate() {
                a[0] = I::fma(wv, I::load(x.add(b * k + i)), a[0]);
            }
            i += I::LANES;
        }
        for (b, a) in acc.iter().enumerate() {
            let mut s = a[0];
            for v in &a[1..] {
                s = I::add(s, *v);
            }
            let mut t = I::hsum(s);
            for j in i..k {
                t += (*wr.add(j)).to_f32() * *x.add(b * k + j);
            }
            *y.add(b * ldy + r) = t;
        }
    }
}

/// `part[b, :] = Σ_{i ∈ rows} x[b, i] · w[i, :]` for `w [k, n]` (the `[in, out]` layout,
/// GPT-2's Conv1D), four weight rows at a time; `part` is `[M, n]`, zeroed by the caller.
///
/// # Safety
/// `x` is `[M, k]` with `k ≥ rows.end`, `w` is `[k, n]`, `part` is `[M, n]`, and the CPU has
/// `I`'s features.
#[inline(always)]
unsafe fn axpy_rows<I: Isa, W: Elem, const M: usize>(
    x: *const f32,
    k: usize,
    w: *const W,
    n: usize,
    rows: std::ops::Range<usize>,
    part: *mut f32,
) {
    let mut r = rows.start;
    let vec_end = n - n % I::LANES;
    let size = std::mem::size_of::<W>();
    let step_bytes = I::LANES * size;
    let ahead = PREFETCH_AHEAD / size;
    while r < rows.end {
        let q = (rows.end - r).min(4);
        let w0 = w.add(r * n);
        let mut j = 0;
        while j < vec_end {
            // One prefetch per 64 bytes of each row's progress (a step is 16-64 bytes). A
            // row's stream ends where the next row's begins, which its own stream reads: the
            // prefetch past a row's end goes to the row this stream reads next, `q` rows on
            // (0.96 of the probe against 0.93 prefetching straight on, in the slow state).
            if (j * size) % 64 < step_bytes {
                let wrap = if j + ahead >= n { (q - 1) * n } else { 0 };
                for s in 0..q {
                    prefetch_ahead(w0.wrapping_add(s * n + j + wrap), 1);
                }
            }
            if q == 4 {
                let v0 = I::load_w(w0.add(j));
                let v1 = I::load_w(w0.add(n + j));
                let v2 = I::load_w(w0.add(2 * n + j));
                let v3 = I::load_w(w0.add(3 * n + j));
                for b in 0..M {
                    let xb = x.add(b * k + r);
                    let yp = part.add(b * n + j);
                    let mut a = I::load(yp);
                    a = I::fma(v0, I::splat(*xb), a);
                    a = I::fma(v1, I::splat(*xb.add(1)), a);
                    a = I::fma(v2, I::splat(*xb.add(2)), a);
                    a = I::fma(v3, I::splat(*xb.add(3)), a);
                    I::store(yp, a);
                }
            } else {
                for s in 0..q {
                    let v = I::load_w(w0.add(s * n + j));
                    for b in 0..M {
                        let yp = part.add(b * n + j);
                        I::store(yp, I::fma(v, I::splat(*x.add(b * k + r + s)), I::load(yp)));
                    }
                }
            }
            j += I::LANES;
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

/// One query head's inputs to [`attend`]: its query, the keys and values it reads (rows of
/// `d`), and which of the `len` keys it may attend.
#[derive(Clone, Copy)]
pub struct Head<E> {
    /// `d` f32: the query.
    pub q: *const f32,
    /// `len × d` keys.
    pub k: *const E,
    /// `len × d` values.
    pub v: *const E,
    /// `len` flags, false for a key not attended; `None` attends all.
    pub keep: Option<*const bool>,
    /// Keys.
    pub len: usize,
    /// Head dimension.
    pub d: usize,
}

/// Attention of one query row over `len` keys: `scores[j] = q·k_j/√d` (`-∞` where `keep[j]`
/// is false), then `out = Σ_j softmax(scores)_j · v_j`. Keys and values are rows of `d`.
///
/// # Safety
/// `q` and `out` are `d` f32, `k` and `v` are `len × d` elements, `keep` (if any) is `len`
/// bools with at least one true, `scores` is `len` f32, and the CPU has `I`'s features.
#[inline(always)]
unsafe fn attend<I: Isa, E: Elem>(h: Head<E>, scores: *mut f32, out: *mut f32) {
    let Head {
        q,
        k,
        v,
        keep,
        len,
        d,
    } = h;
    let scale = 1.0 / (d as f32).sqrt();
    let vec_end = d - d % I::LANES;
    let mut max = f32::NEG_INFINITY;
    for j in 0..len {
        if keep.is_some_and(|m| !*m.add(j)) {
            *scores.add(j) = f32::NEG_INFINITY;
            continue;
        }
        let kr = k.add(j * d);
        // Two accumulators: a 64-wide head is four AVX-512 FMAs, two chains of two.
        let (mut a0, mut a1) = (I::zero(), I::zero());
        let mut i = 0;
        while i + 2 * I::LANES <= d {
            a0 = I::fma(I::load_w(kr.add(i)), I::load(q.add(i)), a0);
            a1 = I::fma(
                I::load_w(kr.add(i + I::LANES)),
                I::load(q.add(i + I::LANES)),
                a1,
            );
            i += 2 * I::LANES;
        }
        if i < vec_end {
            a0 = I::fma(I::load_w(kr.add(i)), I::load(q.add(i)), a0);
        }
        let mut s = I::hsum(I::add(a0, a1));
        for i in vec_end..d {
            s += (*kr.add(i)).to_f32() * *q.add(i);
        }
        let s = s * scale;
        *scores.add(j) = s;
        max = max.max(s);
    }
    let mut sum = 0f32;
    for j in 0..len {
        let e = (*scores.add(j) - max).exp();
        *scores.add(j) = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    // Four registers of the output at a time, held across all the keys.
    const U: usize = 4;
    let mut i = 0;
    while i < vec_end {
        let u = ((vec_end - i) / I::LANES).min(U);
        let mut acc = [I::zero(); U];
        for j in 0..len {
            let p = I::splat(*scores.add(j));
            let vr = v.add(j * d + i);
            for (t, a) in acc.iter_mut().enumerate().take(u) {
                *a = I::fma(p, I::load_w(vr.add(t * I::LANES)), *a);
            }
        }
        for (t, a) in acc.iter().enumerate().take(u) {
            I::store(out.add(i + t * I::LANES), *a);
        }
        i += u * I::LANES;
    }
    for i in vec_end..d {
        let mut a = 0f32;
        for j in 0..len {
            a += *scores.add(j) * (*v.add(j * d + i)).to_f32();
        }
        *out.add(i) = a;
    }
    for i in 0..d {
        *out.add(i) *= inv;
    }
}

/// The entry points for one instruction set: the loops above compiled with its features.
macro_rules! entry_points {
    ($isa:ty, $features:literal, $dot:ident, $axpy:ident, $attend:ident) => {
        /// [`dot_rows`] with this instruction set's features enabled.
        ///
        /// # Safety
        /// As [`dot_rows`].
        #[target_feature(enable = $features)]
        pub unsafe fn $dot<W: Elem, const M: usize, const U: usize>(
            x: *const f32,
            k: usize,
            w: *const W,
            rows: std::ops::Range<usize>,
            y: *mut f32,
            ldy: usize,
        ) {
            dot_rows::<$isa, W, M, U>(x, k, w, rows, y, ldy)
        }

        /// [`axpy_rows`] with this instruction set's features enabled.
        ///
        /// # Safety
        /// As [`axpy_rows`].
        #[target_feature(enable = $features)]
        pub unsafe fn $axpy<W: Elem, const M: usize>(
            x: *const f32,
            k: usize,
            w: *const W,
            n: usize,
            rows: std::ops::Range<usize>,
            part: *mut f32,
        ) {
            axpy_rows::<$isa, W, M>(x, k, w, n, rows, part)
        }

        /// [`attend`] with this instruction set's features enabled.
        ///
        /// # Safety
        /// As [`attend`].
        #[target_feature(enable = $features)]
        pub unsafe fn $attend<E: Elem>(h: Head<E>, scores: *mut f32, out: *mut f32) {
            attend::<$isa, E>(h, scores, out)
        }
    };
}

entry_points!(Avx2, "avx2,fma", dot_rows_avx2, axpy_rows_avx2, attend_avx2);
entry_points!(
    Avx512,
    "avx512f,avx2,fma",
    dot_rows_avx512,
    axpy_rows_avx512,
    attend_avx512
);
