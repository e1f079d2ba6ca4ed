"""Load time and peak memory of Hugging Face transformers' `AutoModelForCausalLM.from_pretrained`
on a model directory: the baseline `cargo xtask bench load` compares `mf bench-load` with.

The imports (torch, transformers) happen before the clock starts, as `mf bench-load` starts
timing after libtorch is loaded; peak RSS is the whole process's (VmHWM), imports included.

Prints one JSON line: {"impl", "load_s", "peak_rss_mib", "rss_before_mib", "parameters",
"dtype"}; `rss_before_mib` is the RSS just before `from_pretrained`, after the imports.
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def status_mib(key):
    """A memory line of /proc/self/status (`VmHWM:`, `VmRSS:`) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="model directory")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = ap.parse_args()
    rss_before = status_mib("VmRSS:")
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype])
    load_s = time.perf_counter() - t0
    first = next(model.parameters())
    print(json.dumps({
        "impl": "transformers",
        "load_s": load_s,
        "peak_rss_mib": status_mib("VmHWM:"),
        "rss_before_mib": rss_before,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(first.dtype).removeprefix("torch."),
    }))


if __name__ == "__main__":
    main()
