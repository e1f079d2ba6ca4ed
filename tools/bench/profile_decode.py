"""Per-op profile of mindformers-rs decode steps: `perf record` over `mf bench-generate`, self
time grouped by what the symbol does.

    python3 tools/bench/profile_decode.py [--kernels mf|libtorch] [-- extra mf bench-generate args]

Needs Linux `perf` (user-space sampling is enough: perf_event_paranoid <= 2). The prompt is one
token and 256 tokens are generated, so prefill is negligible and the samples are decode steps.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# First match wins; patterns are matched against "dso symbol".
GROUPS = [
    ("matmul: mf decode kernels", r"kernels::simd|dot_rows|axpy_rows"),
    ("matmul: MKL / oneDNN GEMM", r"mkl_|libmkl|gemm|gemv|dnnl|sgemm|mkldnn"),
    ("OpenMP runtime (team start, barriers, spinning)", r"libgomp|libiomp|gomp_|GOMP_"),
    ("attention (sdpa kernels)", r"flash|sdpa|scaled_dot|attention|softmax"),
    ("norms (layer_norm / rms_norm)", r"layer_norm|LayerNorm|rms_norm|batch_norm|norm_kernel"),
    ("activations (gelu, silu)", r"gelu|silu|GeluKernel|tanh"),
    ("copies, cat, index (KV cache writes, reshapes)", r"copy_|copy_kernel|memcpy|memmove|cat_|index|narrow|contiguous|embedding"),
    ("elementwise and reductions (add, mul, argmax)", r"add_kernel|mul_kernel|binary|Reduce|reduce|argmax|max_kernel|vectorized|Vectorized|cpu_kernel|loop2d|TensorIterator"),
    ("allocation (malloc, free, caching)", r"malloc|free|alloc|Alloc|mmap|munmap|brk|memset"),
    ("libtorch dispatch and tensor bookkeeping", r"c10::|at::|torch::|Dispatch|dispatch|intrusive_ptr|TensorImpl|OperatorHandle|boxed|libc10|libtorch"),
    ("mindformers-rs host code (generation loop, tch wrappers)", r"\bmf\b|mf_|mindformers|tch::|torch_sys"),
    ("kernel (syscalls, page faults, scheduler)", r"\[kernel|\[unknown\]"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", default="mf", choices=["mf", "libtorch"])
    ap.add_argument("--mf", default=os.path.join(ROOT, "target/release/mf"))
    ap.add_argument("rest", nargs="*")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        cmd = [
            "perf", "record", "-q", "-F", "1999", "-o", data, "--",
            args.mf, "bench-generate", "--batch", "1", "--prompt-len", "1",
            "--new-tokens", "256", "--repeats", "3", "--kernels", args.kernels, *args.rest,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"perf record failed ({out.returncode}): {out.stderr.strip()[-500:]}")
        line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
        rep = subprocess.run(
            ["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "pid,dso,sym",
             "--percent-limit", "0"],
            capture_output=True, text=True, check=True,
        ).stdout
    totals = collections.Counter()
    top = collections.defaultdict(list)
    rows = []
    for l in rep.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+):\S*\s+(\S+)\s+\[[.k]\]\s+(.*)", l)
        if m:
            rows.append((float(m.group(1)), int(m.group(2)), m.group(3), m.group(4).strip()))
    # The main thread (tid = pid, the smallest) is the critical path: it runs part 0 of every
    # kernel and every other op, and waits in the OpenMP barrier for the other parts. Samples
    # of the other threads spinning between kernels cost no wall time, so they are left out.
    main_tid = min(t for _, t, _, _ in rows)
    for pct, tid, dso, sym in rows:
        if tid != main_tid:
            continue
        key = f"{dso} {sym}"
        group = next((g for g, p in GROUPS if re.search(p, key)), "other")
        # The bandwidth probe after the timed runs is not decode.
        if "sum_kernel" in sym or "cascade_sum" in sym:
            group = "(bandwidth probe, not decode)"
        totals[group] += pct
        top[group].append((pct, sym[:90]))
    print(line)
    decode = sum(v for g, v in totals.items() if not g.startswith("("))
    print("main thread only (the critical path)")
    print(f"| share of decode samples | what | top symbols |")
    print("|---|---|---|")
    for g, v in totals.most_common():
        if g.startswith("("):
            continue
        syms = "; ".join(f"{s} {p:.1f}%" for p, s in sorted(top[g], reverse=True)[:2])
        print(f"| {100 * v / decode:.1f}% | {g} | {syms} |")


if __name__ == "__main__":
    main()
