//! Parallel parts of a kernel on libtorch's own OpenMP threads.
//!
//! A decode step runs ~50 small matrix products back to back between libtorch ops. A thread
//! pool of our own fights libtorch's OpenMP workers for the cores: after each parallel op they
//! spin for a while (GNU OpenMP's default wait policy), and on a 2-core host the kernels ran 3x
//! slower than libtorch's GEMV. Opening the parallel region through the same OpenMP runtime
//! (`GOMP_parallel`, the entry point `#pragma omp parallel` compiles to, which libgomp, LLVM's
//! libomp and Intel's libiomp5 all export) reuses those warm workers instead. Without an
//! OpenMP runtime in the process the parts run on the calling thread.
use std::ffi::{c_int, c_uint, c_void};
use std::sync::OnceLock;

/// A job for every part `0..parts`.
pub type Job<'a> = &'a (dyn Fn(usize) + Sync);

type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
type OmpQuery = unsafe extern "C" fn() -> c_int;

struct Omp {
    parallel: GompParallel,
    thread_num: OmpQuery,
    num_threads: OmpQuery,
}

fn omp() -> Option<&'static Omp> {
    static OMP: OnceLock<Option<Omp>> = OnceLock::new();
    OMP.get_or_init(|| {
        let find = |name: &std::ffi::CStr| {
            // SAFETY: dlsym with RTLD_DEFAULT only looks the name up among loaded libraries.
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let (p, t, n) = (
            find(c"GOMP_parallel")?,
            find(c"omp_get_thread_num")?,
            find(c"omp_get_num_threads")?,
        );
        // SAFETY: these are the OpenMP runtime's C entry points with these signatures.
        unsafe {
            Some(Omp {
                parallel: std::mem::transmute::<*mut c_void, GompParallel>(p),
                thread_num: std::mem::transmute::<*mut c_void, OmpQuery>(t),
                num_threads: std::mem::transmute::<*mut c_void, OmpQuery>(n),
            })
        }
    })
    .as_ref()
}

/// Parts worth splitting a kernel into: libtorch's intra-op thread count.
pub fn threads() -> usize {
    tch::get_num_threads().max(1) as usize
}

struct Region<'a> {
    job: Job<'a>,
    parts: usize,
    omp: &'static Omp,
}

extern "C" fn region(data: *mut c_void) {
    // SAFETY: `run` passes a `Region` that outlives the parallel region it opens.
    let r = unsafe { &*(data as *const Region<'_>) };
    // SAFETY: called inside a parallel region, as the OpenMP API allows.
    let (me, team) = unsafe { ((r.omp.thread_num)(), (r.omp.num_threads)()) };
    let (me, team) = (me.max(0) as usize, team.max(1) as usize);
    // The runtime may grant fewer threads than asked for: the team covers every part.
    (me..r.parts).step_by(team).for_each(r.job);
}

/// Runs `job(0..parts)`, in parallel where an OpenMP runtime is loaded, and returns when every
/// part is done. Jobs must not panic (the region is C code).
pub fn run(parts: usize, job: Job<'_>) {
    match omp() {
        Some(omp) if parts > 1 => {
            let r = Region { job, parts, omp };
            // SAFETY: GOMP_parallel runs `region` on a team and returns after all have
            // finished, so `r` is live throughout.
            unsafe {
                (omp.parallel)(
                    region,
                    &r as *const Region<'_> as *mut c_void,
                    parts as c_uint,
                    0,
                )
            };
        }
        _ => (0..parts).for_each(job),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_part_runs_once() {
        for parts in [1, 2, 5] {
            let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            run(parts, &|t| {
                hits[t].fetch_add(1, Ordering::SeqCst);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::SeqCst) == 1),
                "{parts} parts"
            );
        }
    }

    #[test]
    fn libtorch_brings_an_openmp_runtime() {
        // Make sure libtorch is loaded before looking.
        let _ = tch::get_num_threads();
        assert!(
            omp().is_some(),
            "no GOMP_parallel in the process: the kernels would run on one thread"
        );
    }
}
