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
//! time); everything else goes to libtorch. [`elementwise`] has the step's small operations
//! (RMSNorm, rotary embedding), whose cost at this size is libtorch's dispatch.
pub mod attention;
pub mod elementwise;
pub mod pool;
#[cfg(target_arch = "x86_64")]
mod simd;

use crate::layers::WeightLayout;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// Whether this CPU can run the kernels with `simd`.
fn runs_here(simd: Simd) -> bool {
    best_simd().is_some_and(|best| simd <= best)
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
    small_batch_linears(x, &[(w, b)], layout)?.pop()
}

/// [`small_batch_linear`] for several weights that share the input `x` (q/k/v, gate/up), all
/// in one parallel region: one fork/join and one tail wait instead of one per weight. `None`
/// unless the kernels apply to every weight.
pub fn small_batch_linears(
    x: &Tensor,
    ws: &[(&Tensor, Option<&Tensor>)],
    layout: WeightLayout,
) -> Option<Vec<Tensor>> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    small_batch_linears_with(best_simd()?, x, ws, layout)
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
    small_batch_linears_with(simd, x, &[(w, b)], layout)?.pop()
}

/// [`small_batch_linears`] with a chosen instruction set.
pub fn small_batch_linears_with(
    simd: Simd,
    x: &Tensor,
    ws: &[(&Tensor, Option<&Tensor>)],
    layout: WeightLayout,
) -> Option<Vec<Tensor>> {
    if !runs_here(simd) || ws.is_empty() {
        return None;
    }
    let kind = x.kind();
    if !matches!(kind, Kind::Float | Kind::BFloat16)
        || x.device() != Device::Cpu
        || x.dim() != 2
        || x.requires_grad()
    {
        return None;
    }
    let (m, k) = (x.size()[0] as usize, x.size()[1] as usize);
    if m == 0 || m > MAX_ROWS || k == 0 {
        return None;
    }
    let mut ns = Vec::with_capacity(ws.len());
    let mut params_need_grad = false;
    for &(w, b) in ws {
        if w.kind() != kind || w.device() != Device::Cpu || w.dim() != 2 || !w.is_contiguous() {
            return None;
        }
        let (wk, n) = match (layout, w.size().as_slice()) {
            (WeightLayout::InOut, &[k, n]) => (k as usize, n as usize),
            (WeightLayout::OutIn, &[n, k]) => (k as usize, n as usize),
            _ => return None,
        };
        if wk != k || n == 0 {
            return None;
        }
        if let Some(b) = b {
            if b.kind() != kind || b.device() != Device::Cpu || b.numel() != n || !b.is_contiguous()
            {
                return None;
            }
        }
        params_need_grad |= w.requires_grad() || b.is_some_and(|b| b.requires_grad());
        ns.push(n);
    }
    if params_need_grad && grad_mode() {
        return None;
    }
    product(simd, x, ws, layout, m, k, &ns)
}

#[cfg(not(target_arch = "x86_64"))]
fn product(
    _: Simd,
    _: &Tensor,
    _: &[(&Tensor, Option<&Tensor>)],
    _: WeightLayout,
    _: usize,
    _: usize,
    _: &[usize],
) -> Option<Vec<Tensor>> {
    None
}

/// An address that crosses into the pool's threads; the pointee outlives `Pool::run`.
#[derive(Clone, Copy)]
struct Addr(usize);

/// One weight of a product: its data, its `[m, n]` f32 output, its output count.
#[derive(Clone, Copy)]
struct Job {
    w: Addr,
    y: Addr,
    n: usize,
}

#[cfg(target_arch = "x86_64")]
fn product(
    simd: Simd,
    x: &Tensor,
    ws: &[(&Tensor, Option<&Tensor>)],
    layout: WeightLayout,
    m: usize,
    k: usize,
    ns: &[usize],
) -> Option<Vec<Tensor>> {
    let kind = x.kind();
    let xf = if kind == Kind::Float && x.is_contiguous() {
        x.shallow_clone()
    } else {
        x.f_to_kind(Kind::Float).ok()?.f_contiguous().ok()?
    };
    // `[in, out]` parts accumulate into their output, so it starts at zero; `[out, in]`
    // writes every element once.
    let outs = ns
        .iter()
        .map(|&n| {
            let dims = [m as i64, n as i64];
            match layout {
                WeightLayout::InOut => Tensor::f_zeros(dims, (Kind::Float, Device::Cpu)),
                WeightLayout::OutIn => Tensor::f_empty(dims, (Kind::Float, Device::Cpu)),
            }
            .ok()
        })
        .collect::<Option<Vec<_>>>()?;
    let jobs: Vec<Job> = ws
        .iter()
        .zip(&outs)
        .zip(ns)
        .map(|((&(w, _), y), &n)| Job {
            w: Addr(w.data_ptr() as usize),
            y: Addr(y.data_ptr() as usize),
            n,
        })
        .collect();
    let bytes = k * ns.iter().sum::<usize>() * kind.elt_size_in_bytes();
    let parts = if bytes < PARALLEL_BYTES {
        1
    } else {
        pool::threads()
    };
    let xp = Addr(xf.data_ptr() as usize);
    let shape = Shape { m, k, parts };
    // SAFETY: the shapes were checked against `m`, `k` and each `n`; every pointer is a live,
    // contiguous CPU buffer for the duration of `pool.run`; `simd` is on this CPU.
    unsafe {
        match (layout, kind) {
            (WeightLayout::OutIn, Kind::BFloat16) => out_in::<u16>(simd, xp, &jobs, shape),
            (WeightLayout::OutIn, _) => out_in::<f32>(simd, xp, &jobs, shape),
            (WeightLayout::InOut, Kind::BFloat16) => in_out::<u16>(simd, xp, &jobs, shape),
            (WeightLayout::InOut, _) => in_out::<f32>(simd, xp, &jobs, shape),
        }
    }
    ws.iter()
        .zip(outs)
        .map(|(&(_, b), mut out)| {
            let out = match b {
                // One libtorch add per biased weight: reading the bias in place.
                Some(b) if kind == Kind::Float => out.f_add_(b).ok()?,
                Some(b) => out.f_add_(&b.f_to_kind(Kind::Float).ok()?).ok()?,
                None => out,
            };
            if kind == Kind::Float {
                Some(out)
            } else {
                out.f_to_kind(kind).ok()
            }
        })
        .collect()
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

/// The sizes shared by the weights of one product: `x [m, k]`, over `parts` threads.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    k: usize,
    parts: usize,
}

/// `W [n, k]`: each part computes disjoint ranges of outputs.
#[cfg(target_arch = "x86_64")]
unsafe fn out_in<W: simd::Elem>(simd: Simd, x: Addr, jobs: &[Job], s: Shape) {
    use simd::{dot_rows_avx2, dot_rows_avx512};
    let Shape { m, k, parts } = s;
    // Outputs are claimed in chunks, so a thread that started late or streams slower takes
    // fewer: a static split left the caller waiting in the barrier for ~10% of a decode step.
    // Each output is still one dot product in a fixed order, so results do not depend on
    // which thread computed them. Chunks run over all the weights laid end to end.
    let total: usize = jobs.iter().map(|j| j.n).sum();
    let chunks = if parts > 1 {
        parts * CHUNKS_PER_PART
    } else {
        1
    };
    let size = total.div_ceil(chunks).div_ceil(4) * 4;
    let chunk = |c: usize| {
        // Chunk `c` in the weights laid end to end, cut at each weight's end.
        let (mut lo, mut job) = (c * size, None);
        for j in jobs {
            let per = j.n.div_ceil(size);
            if lo < per * size {
                job = Some(j);
                break;
            }
            lo -= per * size;
        }
        let Some(j) = job else { return };
        let rows = lo..(lo + size).min(j.n);
        let (x, w, y, n) = (x.0 as *const f32, j.w.0 as *const W, j.y.0 as *mut f32, j.n);
        // Registers along the weight row per input row, so that M·U accumulators hide the
        // FMA latency without spilling.
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
        // SAFETY: as in `product`; chunks are disjoint output ranges.
        unsafe {
            match simd {
                Simd::Avx2 => dot!(dot_rows_avx2),
                Simd::Avx512 => dot!(dot_rows_avx512),
            }
        }
    };
    // Each thread first claims the chunks of its own contiguous share, in order, so that its
    // reads stay one stream across chunk boundaries (a chunk taken in turn with the other
    // thread restarts the hardware prefetcher: 1-4 MiB weights read 8-15% slower so); a
    // thread done with its share then takes what is left of the others'.
    let count: usize = jobs.iter().map(|j| j.n.div_ceil(size)).sum();
    let share = |t: usize| split(count, parts, t, 1);
    let next: Vec<AtomicUsize> = (0..parts)
        .map(|t| AtomicUsize::new(share(t).start))
        .collect();
    pool::run(parts, &|t| {
        for owner in (0..parts).map(|i| (t + i) % parts) {
            let end = share(owner).end;
            loop {
                let c = next[owner].fetch_add(1, Ordering::Relaxed);
                if c >= end {
                    break;
                }
                chunk(c);
            }
        }
    });
}

/// `W [k, n]`: each part sums a range of input rows into its own partial outputs; the
/// caller's thread adds the partials.
#[cfg(target_arch = "x86_64")]
unsafe fn in_out<W: simd::Elem>(simd: Simd, x: Addr, jobs: &[Job], s: Shape) {
    use simd::{axpy_rows_avx2, axpy_rows_avx512};
    let Shape { m, k, parts } = s;
    let total: usize = jobs.iter().map(|j| j.n).sum();
    let mut partials = vec![0f32; (parts - 1) * m * total];
    let scratch = Addr(partials.as_mut_ptr() as usize);
    pool::run(parts, &|t| {
        let rows = split(k, parts, t, 4);
        let mut offset = (t.max(1) - 1) * m * total;
        for j in jobs {
            let part = if t == 0 {
                j.y.0 as *mut f32
            } else {
                (scratch.0 as *mut f32).wrapping_add(offset)
            };
            offset += m * j.n;
            let (x, w, n, rows) = (x.0 as *const f32, j.w.0 as *const W, j.n, rows.clone());
            // SAFETY: as in `product`; each part writes only its own buffers.
            unsafe {
                match simd {
                    Simd::Avx2 => by_rows!(m, axpy_rows_avx2::<W>(x, k, w, n, rows, part)),
                    Simd::Avx512 => by_rows!(m, axpy_rows_avx512::<W>(x, k, w, n, rows, part)),
                }
            }
        }
    });
    let mut p = partials.as_slice();
    while !p.is_empty() {
        for j in jobs {
            // SAFETY: `y` is this job's [m, n] output, written by part 0 only.
            let out = unsafe { std::slice::from_raw_parts_mut(j.y.0 as *mut f32, m * j.n) };
            let (mine, rest) = p.split_at(m * j.n);
            out.iter_mut().zip(mine).for_each(|(o, v)| *o += v);
            p = rest;
        }
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

    /// A random `k`-in, `n`-out weight stored in `layout`.
    fn random_weight(layout: WeightLayout, k: i64, n: i64, kind: Kind) -> Tensor {
        let dims = match layout {
            WeightLayout::InOut => [k, n],
            WeightLayout::OutIn => [n, k],
        };
        Tensor::randn(dims, (Kind::Float, Device::Cpu)).to_kind(kind)
    }

    /// `got` is libtorch's product within the summation order (f32) or the output's rounding
    /// (bf16), relative to the output's scale.
    fn assert_close(
        got: &Tensor,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        layout: WeightLayout,
        what: &str,
    ) {
        let want = reference(x, w, b, layout);
        let err = (got.to_kind(Kind::Float) - &want)
            .abs()
            .max()
            .double_value(&[]);
        let scale = want.abs().max().double_value(&[]).max(1.0);
        let tol = if w.kind() == Kind::Float { 1e-5 } else { 1e-2 };
        assert!(err <= tol * scale, "{what} {:?}: {err}", w.kind());
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
                        let w = random_weight(layout, k, n, kind);
                        let b = Tensor::randn([n], (Kind::Float, Device::Cpu)).to_kind(kind);
                        for m in 1..=MAX_ROWS as i64 {
                            let x = Tensor::randn([m, k], (Kind::Float, Device::Cpu)).to_kind(kind);
                            for bias in [None, Some(&b)] {
                                let got = small_batch_linear_with(simd, &x, &w, bias, layout)
                                    .expect("the kernel applies");
                                assert_eq!(got.size(), [m, n]);
                                assert_eq!(got.kind(), kind);
                                let what = format!("{simd:?} k {k} n {n} m {m} {layout:?}");
                                assert_close(&got, &x, &w, bias, layout, &what);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn several_weights_in_one_region_match_each_alone() {
        if !cpu_supported() {
            eprintln!("skipped: this CPU has no AVX2/FMA, the kernels never run here");
            return;
        }
        tch::manual_seed(1);
        let opts = (Kind::Float, Device::Cpu);
        // 300 x (1031 + 260 + 5) is over PARALLEL_BYTES: chunks cross weight boundaries.
        for simd in Simd::supported() {
            for (k, outs) in [(13, [7, 3, 1]), (300, [1031, 260, 5])] {
                for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
                    for kind in [Kind::Float, Kind::BFloat16] {
                        let ws: Vec<Tensor> = outs
                            .iter()
                            .map(|&n| random_weight(layout, k, n, kind))
                            .collect();
                        let b = Tensor::randn([outs[1]], opts).to_kind(kind);
                        let group = [(&ws[0], None), (&ws[1], Some(&b)), (&ws[2], None)];
                        for m in [1, 3, MAX_ROWS as i64] {
                            let x = Tensor::randn([m, k], opts).to_kind(kind);
                            let got = small_batch_linears_with(simd, &x, &group, layout)
                                .expect("the kernels apply");
                            assert_eq!(got.len(), 3);
                            for ((w, bias), y) in group.iter().zip(&got) {
                                let alone = small_batch_linear_with(simd, &x, w, *bias, layout)
                                    .expect("the kernel applies");
                                // `[out, in]`: the same dot products in the same order,
                                // equal. `[in, out]` sums per-thread partials, and a small
                                // weight alone runs on one thread: close.
                                if layout == WeightLayout::OutIn {
                                    assert!(y.equal(&alone), "{simd:?} k {k} m {m} {kind:?}");
                                }
                                let what = format!("{simd:?} k {k} m {m} {layout:?} group");
                                assert_close(y, &x, w, *bias, layout, &what);
                            }
                        }
                    }
                }
            }
        }
        // Weights that disagree on the input size are not one group.
        let x = Tensor::randn([1, 8], opts);
        let (a, b) = (Tensor::randn([4, 8], opts), Tensor::randn([4, 9], opts));
        assert!(small_batch_linears(&x, &[(&a, None), (&b, None)], WeightLayout::OutIn).is_none());
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
