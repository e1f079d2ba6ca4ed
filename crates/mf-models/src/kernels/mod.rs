//! Hand-written matrix products for decoding: `x · W` for a few rows of `x` (the decode batch)
//! against a large weight, streaming the weight once with every core.
//!
//! At batch 1-8 a linear layer is memory-bound: libtorch's GEMV (MKL) reads GPT-2's weights
//! at 16-24 GB/s on the 2-core hosts where `flops::read_bandwidth` measures 35-45 GB/s, and
//! against the `[out, in]` layout of `nn.Linear` it is slower still (docs/BENCHMARKS.md,
//! "Decode profile"). These kernels split the weight's rows over libtorch's OpenMP threads ([`pool`]) and load
//! each weight vector once for all rows of `x`; bf16 weights are widened in registers, so a
//! bf16 model reads half the bytes with f32 arithmetic. They run only where no gradient is
//! needed, on x86-64 CPUs with AVX2 and FMA, in AVX-512 where the CPU has it (detected at run
//! time); everything else goes to libtorch.
pub mod pool;
#[cfg(target_arch = "x86_64")]
mod simd;

use crate::layers::WeightLayout;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

/// The most rows of `x` the kernels take; more rows are a GEMM, which libtorch does well.
pub const MAX_ROWS: usize = 8;

/// Weights below this many bytes run on the calling thread alone: the handoff would cost more
/// than half the product.
const PARALLEL_BYTES: usize = 256 << 10;

/// Chunks per thread of an `[out, in]` product, claimed dynamically.
const CHUNKS_PER_PART: usize = 8;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the kernels on or off for the process (benchmarks compare against libtorch's path).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Whether the kernels are on and this CPU can run them.
pub fn available() -> bool {
    ENABLED.load(Ordering::SeqCst) && cpu_supported()
}

/// The instruction set the kernels run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// AVX2 and FMA, 256-bit registers.
    Avx2,
    /// AVX-512F, 512-bit registers.
    Avx512,
}

impl Simd {
    /// The instruction sets this CPU can run the kernels with, in order of preference last.
    pub fn supported() -> Vec<Simd> {
        [Simd::Avx2, Simd::Avx512]
            .into_iter()
            .filter(|s| s.on_this_cpu())
            .collect()
    }

    fn on_this_cpu(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            match self {
                Simd::Avx2 => avx2,
                Simd::Avx512 => avx2 && is_x86_feature_detected!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The lowercase name (`avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }
}

/// The instruction set the kernels use on this CPU (the widest it has), or `None` where it
/// lacks AVX2/FMA.
pub fn best_simd() -> Option<Simd> {
    static BEST: std::sync::OnceLock<Option<Simd>> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| Simd::supported().last().copied())
}

/// Whether this CPU has the instructions the kernels need (at least AVX2 and FMA).
pub fn cpu_supported() -> bool {
    best_simd().is_some()
}

/// Whether autograd records operations on this thread. tch keeps the flag private; setting
/// it returns the previous value, so set it and put it back (no tensor work, unlike a probe).
fn grad_mode() -> bool {
    // SAFETY: plain calls into libtorch's thread-local grad-mode flag.
    unsafe {
        let prev = torch_sys::at_grad_set_enabled(0);
        torch_sys::at_grad_set_enabled(prev);
        prev != 0
    }
}

/// `x · W (+ b)` for `x [m, in]` with `1 ≤ m ≤ MAX_ROWS`, when the kernels apply: CPU, f32 or
/// bf16 (`x`, `W` and `b` of one dtype), a contiguous `W` in `layout`, and no gradient needed.
/// `None` leaves the product to libtorch (which also reports any shape mismatch).
pub fn small_batch_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    layout: WeightLayout,
) -> Option<Tensor> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    small_batch_linear_with(best_simd()?, x, w, b, layout)
}

/// [`small_batch_linear`] with a chosen instruction set (tests and benchmarks compare them);
/// `None` also where this CPU lacks `simd`.
pub fn small_batch_linear_with(
    simd: Simd,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    layout: WeightLayout,
) -> Option<Tensor> {
    if best_simd().is_none_or(|best| simd > best) {
        return None;
    }
    let kind = w.kind();
    if !matches!(kind, Kind::Float | Kind::BFloat16)
        || x.kind() != kind
        || x.device() != Device::Cpu
        || w.device() != Device::Cpu
        || x.dim() != 2
        || w.dim() != 2
        || !w.is_contiguous()
    {
        return None;
    }
    let m = x.size()[0] as usize;
    let (k, n) = match (layout, w.size().as_slice()) {
        (WeightLayout::InOut, &[k, n]) => (k as usize, n as usize),
        (WeightLayout::OutIn, &[n, k]) => (k as usize, n as usize),
        _ => return None,
    };
    if m == 0 || m > MAX_ROWS || x.size()[1] as usize != k || k == 0 || n == 0 {
        return None;
    }
    if let Some(b) = b {
        if b.kind() != kind || b.device() != Device::Cpu || b.numel() != n || !b.is_contiguous() {
            return None;
        }
    }
    if x.requires_grad() {
        return None;
    }
    let params_need_grad = w.requires_grad() || b.is_some_and(|b| b.requires_grad());
    if params_need_grad && grad_mode() {
        return None;
    }
    product(simd, x, w, b, layout, m, k, n)
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
fn product(
    _: Simd,
    _: &Tensor,
    _: &Tensor,
    _: Option<&Tensor>,
    _: WeightLayout,
    _: usize,
    _: usize,
    _: usize,
) -> Option<Tensor> {
    None
}

/// An address that crosses into the pool's threads; the pointee outlives `Pool::run`.
#[derive(Clone, Copy)]
struct Addr(usize);

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn product(
    simd: Simd,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    layout: WeightLayout,
    m: usize,
    k: usize,
    n: usize,
) -> Option<Tensor> {
    let xf = if x.kind() == Kind::Float && x.is_contiguous() {
        x.shallow_clone()
    } else {
        x.f_to_kind(Kind::Float).ok()?.f_contiguous().ok()?
    };
    let out = Tensor::f_zeros([m as i64, n as i64], (Kind::Float, Device::Cpu)).ok()?;
    let bias: Option<Vec<f32>> = b.map(|b| match b.kind() {
        // SAFETY: a contiguous CPU tensor of `n` elements of the matched dtype.
        Kind::BFloat16 => unsafe { std::slice::from_raw_parts(b.data_ptr() as *const u16, n) }
            .iter()
            .map(|v| simd::Elem::to_f32(*v))
            .collect(),
        _ => unsafe { std::slice::from_raw_parts(b.data_ptr() as *const f32, n) }.to_vec(),
    });
    let bytes = k * n * w.kind().elt_size_in_bytes();
    let parts = if bytes < PARALLEL_BYTES {
        1
    } else {
        pool::threads()
    };
    let (xp, wp, yp) = (
        Addr(xf.data_ptr() as usize),
        Addr(w.data_ptr() as usize),
        Addr(out.data_ptr() as usize),
    );
    // SAFETY: the shapes were checked against `m`, `k`, `n`; every pointer is a live,
    // contiguous CPU buffer for the duration of `pool.run`; `simd` is on this CPU.
    let shape = Shape { m, k, n, parts };
    unsafe {
        match (layout, w.kind()) {
            (WeightLayout::OutIn, Kind::BFloat16) => out_in::<u16>(simd, xp, wp, yp, shape),
            (WeightLayout::OutIn, _) => out_in::<f32>(simd, xp, wp, yp, shape),
            (WeightLayout::InOut, Kind::BFloat16) => in_out::<u16>(simd, xp, wp, yp, shape),
            (WeightLayout::InOut, _) => in_out::<f32>(simd, xp, wp, yp, shape),
        }
    }
    if let Some(bias) = bias {
        // SAFETY: `out` is a contiguous [m, n] f32 buffer that nothing else references.
        let y = unsafe { std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, m * n) };
        for row in y.chunks_mut(n) {
            row.iter_mut().zip(&bias).for_each(|(v, b)| *v += b);
        }
    }
    if w.kind() == Kind::Float {
        Some(out)
    } else {
        out.f_to_kind(w.kind()).ok()
    }
}

/// Part `t` of `parts` of `0..total`, in multiples of `align`.
fn split(total: usize, parts: usize, t: usize, align: usize) -> std::ops::Range<usize> {
    let chunk = total.div_ceil(parts).div_ceil(align) * align;
    let lo = (t * chunk).min(total);
    lo..(lo + chunk).min(total)
}

macro_rules! by_rows {
    ($m:expr, $f:ident :: <$w:ty $(, $r:literal)*> ($($arg:expr),*)) => {
        match $m {
            1 => $f::<$w, 1 $(, $r)*>($($arg),*),
            2 => $f::<$w, 2 $(, $r)*>($($arg),*),
            3 => $f::<$w, 3 $(, $r)*>($($arg),*),
            4 => $f::<$w, 4 $(, $r)*>($($arg),*),
            5 => $f::<$w, 5 $(, $r)*>($($arg),*),
            6 => $f::<$w, 6 $(, $r)*>($($arg),*),
            7 => $f::<$w, 7 $(, $r)*>($($arg),*),
            _ => $f::<$w, 8 $(, $r)*>($($arg),*),
        }
    };
}

/// The sizes of one product: `x [m, k]`, `n` outputs, over `parts` threads.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    k: usize,
    n: usize,
    parts: usize,
}

/// `W [n, k]`: each part computes a disjoint range of outputs.
#[cfg(target_arch = "x86_64")]
unsafe fn out_in<W: simd::Elem>(simd: Simd, x: Addr, w: Addr, y: Addr, s: Shape) {
    use simd::{dot_rows_avx2, dot_rows_avx512};
    let Shape { m, k, n, parts } = s;
    // Outputs are claimed in chunks, so a thread that started late or streams slower takes
    // fewer: a static split left the caller waiting in the barrier for ~10% of a decode step.
    // Each output is still one dot product in a fixed order, so results do not depend on
    // which thread computed them.
    let chunks = if parts > 1 {
        parts * CHUNKS_PER_PART
    } else {
        1
    };
    let size = n.div_ceil(chunks).div_ceil(4) * 4;
    let next = std::sync::atomic::AtomicUsize::new(0);
    pool::run(parts, &|_| loop {
        let c = next.fetch_add(1, Ordering::Relaxed);
        if c * size >= n {
            break;
        }
        let rows = c * size..((c + 1) * size).min(n);
        let (x, w, y) = (x.0 as *const f32, w.0 as *const W, y.0 as *mut f32);
        // Registers along the weight row per input row, so that M·U accumulators hide the
        // FMA latency without spilling.
        // SAFETY: as in `product`; chunks are disjoint output ranges.
        macro_rules! dot {
            ($f:ident) => {
                match m {
                    1 => $f::<W, 1, 4>(x, k, w, rows, y, n),
                    2 => $f::<W, 2, 2>(x, k, w, rows, y, n),
                    3 => $f::<W, 3, 2>(x, k, w, rows, y, n),
                    4 => $f::<W, 4, 2>(x, k, w, rows, y, n),
                    _ => by_rows!(m, $f::<W, 1>(x, k, w, rows, y, n)),
                }
            };
        }
        unsafe {
            match simd {
                Simd::Avx2 => dot!(dot_rows_avx2),
                Simd::Avx512 => dot!(dot_rows_avx512),
            }
        }
    });
}

/// `W [k, n]`: each part sums a range of input rows into its own partial output; the caller's
/// thread adds the partials.
#[cfg(target_arch = "x86_64")]
unsafe fn in_out<W: simd::Elem>(simd: Simd, x: Addr, w: Addr, y: Addr, s: Shape) {
    use simd::{axpy_rows_avx2, axpy_rows_avx512};
    let Shape { m, k, n, parts } = s;
    let mut partials = vec![0f32; (parts - 1) * m * n];
    let scratch = Addr(partials.as_mut_ptr() as usize);
    pool::run(parts, &|t| {
        let rows = split(k, parts, t, 4);
        let part = if t == 0 {
            y.0 as *mut f32
        } else {
            (scratch.0 as *mut f32).wrapping_add((t - 1) * m * n)
        };
        let (x, w) = (x.0 as *const f32, w.0 as *const W);
        // SAFETY: as in `product`; each part writes only its own buffer.
        unsafe {
            match simd {
                Simd::Avx2 => by_rows!(m, axpy_rows_avx2::<W>(x, k, w, n, rows, part)),
                Simd::Avx512 => by_rows!(m, axpy_rows_avx512::<W>(x, k, w, n, rows, part)),
            }
        }
    });
    // SAFETY: `y` is the [m, n] output, zeroed and written by part 0 only.
    let out = unsafe { std::slice::from_raw_parts_mut(y.0 as *mut f32, m * n) };
    for p in partials.chunks(m * n) {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>, layout: WeightLayout) -> Tensor {
        let (x, w) = (x.to_kind(Kind::Float), w.to_kind(Kind::Float));
        let y = match layout {
            WeightLayout::InOut => x.mm(&w),
            WeightLayout::OutIn => x.mm(&w.tr()),
        };
        match b {
            Some(b) => y + b.to_kind(Kind::Float),
            None => y,
        }
    }

    #[test]
    fn every_batch_size_layout_and_dtype_matches_libtorch() {
        if !cpu_supported() {
            eprintln!("skipped: this CPU has no AVX2/FMA, the kernels never run here");
            return;
        }
        tch::manual_seed(0);
        // Odd sizes exercise the tails; 1031 x 300 f32 is over PARALLEL_BYTES (split path).
        for simd in Simd::supported() {
            for (k, n) in [(13, 7), (64, 36), (300, 1031)] {
                for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
                    for kind in [Kind::Float, Kind::BFloat16] {
                        let dims = match layout {
                            WeightLayout::InOut => [k, n],
                            WeightLayout::OutIn => [n, k],
                        };
                        let w = Tensor::randn(dims, (Kind::Float, Device::Cpu)).to_kind(kind);
                        let b = Tensor::randn([n], (Kind::Float, Device::Cpu)).to_kind(kind);
                        for m in 1..=MAX_ROWS as i64 {
                            let x = Tensor::randn([m, k], (Kind::Float, Device::Cpu)).to_kind(kind);
                            for bias in [None, Some(&b)] {
                                let got = small_batch_linear_with(simd, &x, &w, bias, layout)
                                    .expect("the kernel applies");
                                assert_eq!(got.size(), [m, n]);
                                assert_eq!(got.kind(), kind);
                                let want = reference(&x, &w, bias, layout);
                                let err = (got.to_kind(Kind::Float) - &want)
                                    .abs()
                                    .max()
                                    .double_value(&[]);
                                // f32: summation order only; bf16: the output's rounding.
                                let scale = want.abs().max().double_value(&[]).max(1.0);
                                let tol = if kind == Kind::Float { 1e-5 } else { 1e-2 };
                                assert!(
                                    err <= tol * scale,
                                    "{simd:?} k {k} n {n} m {m} {layout:?} {kind:?}: {err}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn recording_autograd_or_big_batches_go_to_libtorch() {
        let w = Tensor::randn([16, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let x = Tensor::randn([2, 8], (Kind::Float, Device::Cpu));
        assert!(small_batch_linear(&x, &w, None, WeightLayout::OutIn).is_none());
        let with_grad = x.set_requires_grad(true);
        assert!(
            tch::no_grad(|| small_batch_linear(&with_grad, &w, None, WeightLayout::OutIn))
                .is_none()
        );
        let big = Tensor::randn([MAX_ROWS as i64 + 1, 8], (Kind::Float, Device::Cpu));
        assert!(tch::no_grad(|| small_batch_linear(&big, &w, None, WeightLayout::OutIn)).is_none());
        let x = Tensor::randn([2, 8], (Kind::Float, Device::Cpu));
        let used = tch::no_grad(|| small_batch_linear(&x, &w, None, WeightLayout::OutIn));
        assert_eq!(used.is_some(), cpu_supported());
        // The wrong inner size is left to libtorch, which reports it.
        let wrong = Tensor::randn([2, 9], (Kind::Float, Device::Cpu));
        assert!(
            tch::no_grad(|| small_batch_linear(&wrong, &w, None, WeightLayout::OutIn)).is_none()
        );
    }
}
