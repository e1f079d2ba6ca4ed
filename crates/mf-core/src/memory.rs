//! The C allocator under libtorch's CPU tensors. libtorch takes every CPU tensor from the C
//! allocator, and glibc serves blocks above its mmap threshold (32 MiB at most) with a fresh
//! mapping that it unmaps on free: each large activation then faults in zeroed pages again.
//! On a BERT-base forward (batch 32 x 128) that was 1.8 million page faults and about 15% of
//! the time in the kernel. Keeping freed blocks for reuse, as tcmalloc and jemalloc do, takes
//! that away at the cost of holding the peak working set until the process exits.
//!
//! Weights that decode streams every token are also placed on transparent huge pages
//! ([`cpu_copy_on_huge_pages`]): checkpoint tensors as they are read, parameters when a model
//! is moved to the CPU.

/// Makes glibc keep freed memory for reuse (large blocks from the heap, no trimming) instead
/// of returning it to the OS; `true` where it applied. The `mf` command does this at start;
/// a program embedding the library calls it once before its first model. Elsewhere than
/// glibc it does nothing and returns `false`.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; it is called before the threads
        // that allocate tensors start, and these two parameters take any positive int.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The transparent huge page size of x86-64 Linux (and the common arm64 configuration).
pub const HUGE_PAGE: usize = 2 << 20;

/// An uninitialised contiguous CPU tensor whose data starts on a [`HUGE_PAGE`] boundary when
/// it spans at least one huge page, so that [`advise_huge_pages`] can back all of it but the
/// last partial page with huge pages. Decode streams every weight once per token: on 4 KiB
/// pages every page is a TLB miss and a restart of the hardware prefetcher, and the decode
/// kernels read one 500 MB weight 10-20% slower than on huge pages (docs/BENCHMARKS.md).
/// The 2 MiB over-allocation around the data is never touched and its resident pages are
/// given back, so it costs address space, not memory.
#[cfg(feature = "tch")]
pub fn empty_aligned(shape: &[i64], kind: tch::Kind) -> crate::Result<tch::Tensor> {
    let numel: i64 = shape.iter().product();
    let elt = kind.elt_size_in_bytes();
    let opts = (kind, tch::Device::Cpu);
    if (numel.max(0) as usize) * elt < HUGE_PAGE {
        return Ok(tch::Tensor::f_empty(shape, opts)?);
    }
    let extra = (HUGE_PAGE / elt) as i64;
    let buf = tch::Tensor::f_empty([numel + extra], opts)?;
    let p = buf.data_ptr() as usize;
    // libtorch aligns CPU data to 64 bytes, which every element size divides.
    let skip = (p.next_multiple_of(HUGE_PAGE) - p) / elt;
    let t = buf.f_narrow(0, skip as i64, numel)?.f_view(shape)?;
    // Before the first write, so that the pages are faulted in huge where the memory is new.
    madvise(&t, false);
    let (start, end) = (p + skip * elt, p + (skip + numel as usize) * elt);
    release(p, start);
    release(end, p + (numel + extra) as usize * elt);
    Ok(t)
}

/// Gives back the whole small pages in `from..to`, bytes of an allocation that no tensor
/// uses: memory the allocator reuses may already be resident there, and it would count in
/// the RSS for as long as the weight lives.
#[cfg(feature = "tch")]
fn release(from: usize, to: usize) {
    const PAGE: usize = 4096;
    let (from, to) = (from.next_multiple_of(PAGE), to - to % PAGE);
    if to <= from {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: the pages lie inside a live allocation of ours that nothing reads or writes
    // (it reads back as zeros if anything did); the allocator's own bookkeeping sits
    // outside it.
    unsafe {
        libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED);
    }
}

/// Asks the kernel to back the whole huge pages inside `t`'s data with huge pages, moving
/// data already written (`MADV_COLLAPSE`, Linux 6.1+); `true` where that happened. This is
/// a speed hint only: a kernel without transparent huge pages leaves the 4 KiB pages, and
/// the data is the same either way.
#[cfg(feature = "tch")]
pub fn advise_huge_pages(t: &tch::Tensor) -> bool {
    madvise(t, true)
}

/// `MADV_HUGEPAGE` (and with `collapse`, `MADV_COLLAPSE`) over the huge pages inside `t`.
#[cfg(feature = "tch")]
fn madvise(t: &tch::Tensor, collapse: bool) -> bool {
    if t.device() != tch::Device::Cpu || !t.is_contiguous() {
        return false;
    }
    let start = (t.data_ptr() as usize).next_multiple_of(HUGE_PAGE);
    let end = t.data_ptr() as usize + t.numel() * t.kind().elt_size_in_bytes();
    let end = end - end % HUGE_PAGE;
    if end <= start {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        const MADV_COLLAPSE: libc::c_int = 25;
        // SAFETY: the range lies inside `t`'s live allocation; both advices keep its
        // contents (COLLAPSE copies them into the new pages).
        unsafe {
            let (p, len) = (start as *mut libc::c_void, end - start);
            libc::madvise(p, len, libc::MADV_HUGEPAGE) == 0
                && (!collapse || libc::madvise(p, len, MADV_COLLAPSE) == 0)
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = collapse;
        false
    }
}

/// A copy of `src` as `kind` on the CPU, on huge pages where it spans any ([`empty_aligned`],
/// [`advise_huge_pages`]).
#[cfg(feature = "tch")]
pub fn cpu_copy_on_huge_pages(src: &tch::Tensor, kind: tch::Kind) -> crate::Result<tch::Tensor> {
    let mut t = empty_aligned(&src.size(), kind)?;
    tch::no_grad(|| t.f_copy_(src))?;
    advise_huge_pages(&t);
    Ok(t)
}

/// Whether `t` already sits where [`cpu_copy_on_huge_pages`] would put it: a CPU tensor
/// whose data starts on a huge page boundary (or one too small to span a huge page).
#[cfg(feature = "tch")]
pub fn is_huge_page_aligned(t: &tch::Tensor) -> bool {
    t.device() == tch::Device::Cpu
        && t.is_contiguous()
        && (t.numel() * t.kind().elt_size_in_bytes() < HUGE_PAGE
            || (t.data_ptr() as usize).is_multiple_of(HUGE_PAGE))
}

#[cfg(all(test, feature = "tch"))]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn weights_of_a_huge_page_or_more_start_on_one_and_keep_their_values() {
        // Huge pages and a partial one, in f32 (6 MiB) and bf16 (3 MiB).
        for kind in [Kind::Float, Kind::BFloat16] {
            let src = Tensor::randn([1537, 1031], (Kind::Float, Device::Cpu)).to_kind(kind);
            let t = cpu_copy_on_huge_pages(&src, kind).unwrap();
            assert_eq!(t.size(), src.size());
            assert!(t.is_contiguous());
            assert!(
                (t.data_ptr() as usize).is_multiple_of(HUGE_PAGE),
                "{kind:?}"
            );
            assert!(is_huge_page_aligned(&t));
            assert!(t.equal(&src), "{kind:?}: the copy changed the values");
        }
        // A dtype change on the way.
        let src = Tensor::randn([600, 1024], (Kind::Float, Device::Cpu));
        let t = cpu_copy_on_huge_pages(&src, Kind::BFloat16).unwrap();
        assert_eq!(t.kind(), Kind::BFloat16);
        assert!(t.equal(&src.to_kind(Kind::BFloat16)));
    }

    #[test]
    fn small_tensors_are_plain_allocations() {
        let t = empty_aligned(&[16, 16], Kind::Float).unwrap();
        assert_eq!(t.size(), [16, 16]);
        assert!(is_huge_page_aligned(&t), "too small to need an alignment");
        assert!(!advise_huge_pages(&t), "no whole huge page to advise");
        let empty = empty_aligned(&[0, 8], Kind::Float).unwrap();
        assert_eq!(empty.numel(), 0);
    }
}
