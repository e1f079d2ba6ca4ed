#!/usr/bin/env python3
"""Generate tiny, deterministic PanGu-α checkpoints plus reference outputs.

PanGu-α has no Hugging Face class: the reference is the plain PyTorch implementation in
pangualpha_reference.py, written from the PanGu-α paper and MindFormers' model card. The
Rust port must reproduce its logits to ~1e-4 (float32, CPU) and its greedy / beam-search ids
(run through transformers' `generate`) exactly.

Variants (each a directory under tests/fixtures/):

    pangualpha_tiny         3 layers (2 blocks + the top query layer), fast_gelu
    pangualpha_tiny_postln  post_layernorm_residual, gelu, 8 heads

See causal_lm_fixtures.py for the files each directory holds.

Run:  .venv/bin/python tools/reference/make_pangualpha_fixtures.py [--out-root tests/fixtures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import GenerationConfig

from causal_lm_fixtures import BOS, EOS, PAD, make, randomize
from pangualpha_reference import PanguAlphaConfig, PanguAlphaHeadModel

SEED = 0
REPO_ROOT = Path(__file__).resolve().parents[2]

COMMON = dict(vocab_size=128, hidden_size=32, ffn_hidden_size=64, num_layers=3, seq_length=64,
              bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, embedding_dropout_prob=0.0,
              hidden_dropout_rate=0.0, attention_dropout_rate=0.0)

VARIANTS = {
    "pangualpha_tiny": dict(num_heads=4, hidden_act="fast_gelu"),
    "pangualpha_tiny_postln": dict(num_heads=8, hidden_act="gelu", post_layernorm_residual=True),
}


def build(name: str):
    torch.manual_seed(SEED)
    model = PanguAlphaHeadModel(PanguAlphaConfig(**COMMON, **VARIANTS[name])).to(torch.float32)
    randomize(model, SEED)
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-root", default=str(REPO_ROOT / "tests/fixtures"))
    args = ap.parse_args()
    root = Path(args.out_root)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for name in VARIANTS:
        make(name, build(name), root / name, "make_pangualpha_fixtures.py")


if __name__ == "__main__":
    main()
