#!/usr/bin/env python3
"""Check that a LoRA adapter written by mindformers-rs loads in PEFT and reproduces the logits
the Rust model computed.

    .venv/bin/python tools/reference/check_peft_adapter.py DIR

DIR holds `base/` (a transformers model directory), `adapter/` (adapter_config.json +
adapter_model.safetensors) and `expected.safetensors` (int64 `input_ids`, float `logits`).
The adapter is applied with `PeftModel.from_pretrained`, then merged with
`merge_and_unload`; both must match within --tol (default 1e-4). Prints max_abs_diff for each;
exits 1 on failure. Everything is local.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    expected = load_file(str(a.dir / "expected.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(a.dir / "base", local_files_only=True).eval()
    model = PeftModel.from_pretrained(base, a.dir / "adapter", is_trainable=False).eval()
    ok = True
    with torch.no_grad():
        for name, m in (("peft", model), ("merged", None)):
            if m is None:
                m = model.merge_and_unload().eval()
            logits = m(input_ids=expected["input_ids"]).logits
            diff = (logits - expected["logits"]).abs().max().item()
            print(f"{name}: max_abs_diff={diff:.3e}")
            ok &= diff <= a.tol
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
