#!/usr/bin/env python3
"""Generate tiny, deterministic Bloom checkpoints plus reference outputs.

The Rust port (mindformers-rs) loads each checkpoint written here and must reproduce what
Hugging Face transformers' BloomForCausalLM computes for the same weights: logits to ~1e-4
(float32, CPU) and greedy / beam-search token ids exactly.

Variants (each a directory under tests/fixtures/):

    bloom_tiny          4 heads (a power of two), tied head, residual from the block input
    bloom_tiny_sharded  bloom_tiny's weights as model.safetensors.index.json + 2 shards
    bloom_tiny_6heads   6 heads (not a power of two: ALiBi's interleaved extra slopes),
                        apply_residual_connection_post_layernorm, untied head

See causal_lm_fixtures.py for the files each directory holds. Bloom takes no position ids:
ALiBi positions come from the attention mask's cumsum, so the left-padded batch is run with
its mask only.

Run:  .venv/bin/python tools/reference/make_bloom_fixtures.py [--out-root tests/fixtures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import BloomConfig, BloomForCausalLM, GenerationConfig

from causal_lm_fixtures import BOS, EOS, PAD, make, randomize, shard

SEED = 0
REPO_ROOT = Path(__file__).resolve().parents[2]

COMMON = dict(vocab_size=128, n_layer=2, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
              layer_norm_epsilon=1e-5)

VARIANTS = {
    "bloom_tiny": dict(hidden_size=32, n_head=4, tie_word_embeddings=True),
    "bloom_tiny_6heads": dict(hidden_size=24, n_head=6, tie_word_embeddings=False,
                              apply_residual_connection_post_layernorm=True),
}


def build(name: str):
    torch.manual_seed(SEED)
    model = BloomForCausalLM(BloomConfig(**COMMON, **VARIANTS[name])).to(torch.float32)
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
        make(name, build(name), root / name, "make_bloom_fixtures.py", uses_position_ids=False)
    shard(root / "bloom_tiny", root / "bloom_tiny_sharded", BloomForCausalLM)


if __name__ == "__main__":
    main()
