#!/usr/bin/env python3
"""Check that a model directory (e.g. one written by mindformers-rs) loads in
HuggingFace transformers and reproduces reference logits.

    .venv/bin/python tools/reference/check_hf_load.py DIR --expected FILE.safetensors

FILE must hold an int64 `input_ids` [B, T] and float `logits` [B, T, V]
(optionally `attention_mask` and `position_ids`).  With `--prefix single_`
the tensors `single_input_ids`/`single_logits` are used instead, so the GPT-2
fixture's expected.safetensors works directly; when the plain names are absent
that prefix is tried automatically.

If DIR also contains tokenizer files and the vocabulary is GPT-2's (50257
entries), "hello!" must encode to [31373, 0].

Prints `max_abs_diff=...`; exits 1 on any failure (diff > --tol, default 1e-4).
Everything is local: files are read from DIR only, nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
import transformers
from transformers import AutoTokenizer

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.model")
GPT2_VOCAB_SIZE = 50257


def pick(tensors: dict[str, torch.Tensor], prefix: str | None) -> tuple[str, dict[str, torch.Tensor]]:
    candidates = [prefix] if prefix is not None else ["", "single_"]
    for p in candidates:
        if f"{p}input_ids" in tensors and f"{p}logits" in tensors:
            picked = {k: tensors[f"{p}{k}"] for k in ("input_ids", "logits", "attention_mask", "position_ids", "token_type_ids") if f"{p}{k}" in tensors}
            return p, picked
    raise SystemExit(f"no {'/'.join(repr(c + 'input_ids') for c in candidates)} + logits pair in file; has {sorted(tensors)}")


def check_tokenizer(model_dir: Path) -> bool:
    if not any((model_dir / f).exists() for f in TOKENIZER_FILES):
        print("tokenizer: no tokenizer files, skipped")
        return True
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if len(tok) != GPT2_VOCAB_SIZE:
        print(f"tokenizer: {type(tok).__name__} with {len(tok)} tokens (not GPT-2's vocab), loaded OK")
        return True
    ids = tok.encode("hello!", add_special_tokens=False)
    ok = ids == [31373, 0]
    print(f"tokenizer: {type(tok).__name__} 'hello!' -> {ids} {'OK' if ok else 'MISMATCH (want [31373, 0])'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--expected", required=True, type=Path)
    ap.add_argument("--prefix", default=None, help="tensor name prefix in FILE (default: '' then 'single_')")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--auto-class", default="AutoModelForCausalLM",
                    help="the transformers class to load DIR with (e.g. AutoModelForSequenceClassification)")
    args = ap.parse_args()

    prefix, ref = pick(load_file(str(args.expected)), args.prefix)
    model = getattr(transformers, args.auto_class).from_pretrained(
        args.dir, dtype=torch.float32, attn_implementation="eager", local_files_only=True
    ).eval()

    kwargs = {k: ref[k].long() for k in ("attention_mask", "position_ids", "token_type_ids") if k in ref}
    with torch.no_grad():
        logits = model(ref["input_ids"].long(), **kwargs).logits.float()
    want = ref["logits"].float()
    if logits.shape != want.shape:
        print(f"shape mismatch: model {tuple(logits.shape)} vs expected {tuple(want.shape)}")
        sys.exit(1)
    diff = logits - want
    if "attention_mask" in ref and diff.dim() == 3:
        # Logits at padded slots are meaningless (and implementation-defined).
        diff = diff[ref["attention_mask"].bool()]
    max_abs_diff = diff.abs().max().item() if diff.numel() else 0.0
    print(f"model: {type(model).__name__}, tensors '{prefix}*', shape {tuple(want.shape)}")
    print(f"max_abs_diff={max_abs_diff:.3e}")

    ok = max_abs_diff <= args.tol
    ok = check_tokenizer(args.dir) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
