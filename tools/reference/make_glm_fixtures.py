#!/usr/bin/env python3
"""Generate tiny, deterministic GLM-4 (transformers `GlmForCausalLM`, model_type "glm")
checkpoints plus reference outputs.

The Rust port (mindformers-rs) loads each checkpoint written here and must reproduce what
transformers computes for the same weights: logits to ~1e-4 (float32, CPU) and greedy /
beam-search token ids exactly.

Variants (each a directory under tests/fixtures/):

    glm_tiny          GQA (4 heads, 2 kv heads), q/k/v bias, partial rotary 0.5, untied head
    glm_tiny_sharded  glm_tiny's weights as model.safetensors.index.json + 2 shards
    glm_tiny_mqa      MQA (1 kv head), head_dim 16 != hidden/heads, no bias, tied head,
                      partial rotary 0.25, rope_theta 500000

See causal_lm_fixtures.py for the files each directory holds.

Run:  .venv/bin/python tools/reference/make_glm_fixtures.py [--out-root tests/fixtures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import GenerationConfig, GlmConfig, GlmForCausalLM

from causal_lm_fixtures import BOS, EOS, PAD, make, randomize, shard

SEED = 0
REPO_ROOT = Path(__file__).resolve().parents[2]

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6,
              bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, attn_implementation="eager")

VARIANTS = {
    "glm_tiny": dict(num_key_value_heads=2, head_dim=8, attention_bias=True, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                      "partial_rotary_factor": 0.5}),
    "glm_tiny_mqa": dict(num_key_value_heads=1, head_dim=16, attention_bias=False, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 500000.0,
                                          "partial_rotary_factor": 0.25}),
}


def build(name: str):
    torch.manual_seed(SEED)
    model = GlmForCausalLM(GlmConfig(**COMMON, **VARIANTS[name])).to(torch.float32)
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
        make(name, build(name), root / name, "make_glm_fixtures.py")
    shard(root / "glm_tiny", root / "glm_tiny_sharded", GlmForCausalLM)


if __name__ == "__main__":
    main()
