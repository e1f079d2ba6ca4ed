//! The C allocator under libtorch's CPU tensors. libtorch takes every CPU tensor from the C
//! allocator, and glibc serves blocks above its mmap threshold (32 MiB at most) with a fresh
//! mapping that it unmaps on free: each large activation then faults in zeroed pages again.
//! On a BERT-base forward (batch 32 x 128) that was 1.8 million page faults and about 15% of
//! the time in the kernel. Keeping freed blocks for reuse, as tcmalloc and jemalloc do, takes
//! that away at the cost of holding the peak working set until the process exits.

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
