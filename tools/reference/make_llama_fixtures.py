#!/usr/bin/env python3
"""Generate tiny, deterministic LLaMA-family checkpoints plus reference outputs.

The Rust port (mindformers-rs) loads each checkpoint written here and must
reproduce what Hugging Face transformers computes for the same weights: logits
to ~1e-4 (float32, CPU) and greedy / beam-search token ids exactly.

Variants (each a directory under tests/fixtures/):

    llama_tiny          MHA (4 heads, 4 kv heads), untied head, default RoPE
    llama_tiny_sharded  llama_tiny's weights as model.safetensors.index.json + 2 shards
    llama_tiny_gqa      GQA (4 heads, 2 kv heads), tied embeddings, rope_theta 500000
    llama_tiny_llama3   MQA (4 heads, 1 kv head), rope_scaling llama3, attention_bias + mlp_bias
    llama_tiny_dynamic  GQA, rope_scaling dynamic (NTK) with max_position_embeddings 8, so
                        the test sequences run past it and the frequencies really change
    qwen2_tiny          model_type qwen2 (q/k/v bias, no o bias), GQA, rope_scaling linear

Each directory holds config.json + model.safetensors (HF names),
expected.safetensors (single / cached step-by-step / left-padded batch logits) and
expected.json (greedy with and without cache, batched greedy, 3-beam search).

Dynamic NTK RoPE in transformers is stateful (the module keeps the largest
sequence length seen); every reference below starts from a freshly reset rotary
module, which is what a stateless "scale by this call's max position" reproduces.

Run:  .venv/bin/python tools/reference/make_llama_fixtures.py [--out-root tests/fixtures]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SEED = 0
VOCAB = 128
BOS = 1
EOS = 2
PAD = 0
REPO_ROOT = Path(__file__).resolve().parents[2]

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=PAD,
    rms_norm_eps=1e-6,
    attn_implementation="eager",
)

VARIANTS = {
    "llama_tiny": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(num_key_value_heads=4, tie_word_embeddings=False, max_position_embeddings=64),
    ),
    "llama_tiny_gqa": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            num_key_value_heads=2,
            tie_word_embeddings=True,
            max_position_embeddings=64,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        ),
    ),
    "llama_tiny_llama3": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            num_key_value_heads=1,
            tie_word_embeddings=False,
            max_position_embeddings=64,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    "llama_tiny_dynamic": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            num_key_value_heads=2,
            tie_word_embeddings=False,
            max_position_embeddings=8,
            rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
        ),
    ),
    "qwen2_tiny": (
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(
            num_key_value_heads=2,
            tie_word_embeddings=True,
            max_position_embeddings=64,
            rope_parameters={"rope_type": "linear", "rope_theta": 1000000.0, "factor": 2.0},
        ),
    ),
}


def fail(msg: str) -> None:
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def build(name: str):
    cfg_cls, model_cls, extra = VARIANTS[name]
    torch.manual_seed(SEED)
    model = model_cls(cfg_cls(**COMMON, **extra)).to(torch.float32)
    # HF's std=0.02 init makes a 32-wide model's logits nearly uniform, so argmax choices
    # would hinge on rounding. Larger weights separate them; a dedicated generator keeps the
    # values independent of anything else touching the global RNG.
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for pname, p in model.named_parameters():  # tied tensors appear once
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in pname:
                p.copy_(1.0 + 0.1 * noise)
            elif pname.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.3 * noise)
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    model.eval()
    return model


def reset_rope(model) -> None:
    """Forget the dynamic-RoPE state a previous call left behind."""
    rope = model.model.rotary_emb
    if hasattr(rope, "original_inv_freq"):
        rope.inv_freq = rope.original_inv_freq.clone()
        rope.max_seq_len_cached = rope.original_max_seq_len


def left_pad(prompts, pad_id):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def strip_after_eos(prompt, full):
    gen = full[len(prompt) :]
    if EOS in gen:
        gen = gen[: gen.index(EOS) + 1]
    return list(prompt) + gen


@torch.no_grad()
def generate(model, ids, mask=None, **kw):
    reset_rope(model)
    if mask is None:
        mask = torch.ones_like(ids)
    kw.setdefault("do_sample", False)
    kw.setdefault("num_beams", 1)
    return model.generate(
        input_ids=ids, attention_mask=mask, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=BOS, **kw
    )


@torch.no_grad()
def min_greedy_margin(model, prompt, steps) -> float:
    """Smallest top-1/top-2 logit gap along a greedy path (a tiny gap would make ids fragile)."""
    seq = torch.tensor([prompt])
    worst = float("inf")
    for _ in range(steps):
        reset_rope(model)
        logits = model(seq).logits[0, -1]
        top = logits.topk(2).values
        worst = min(worst, (top[0] - top[1]).item())
        seq = torch.cat([seq, logits.argmax().view(1, 1)], 1)
    return worst


SINGLE = [5, 17, 100, 42, 7, 123, 64, 9, 88, 31, 77, 14]
BATCH = [[11, 25, 3, 77, 51, 90, 36, 8, 14, 66, 101], [64, 21, 99, 35, 7, 44], [40, 12, 87]]
GREEDY = [5, 17, 100, 42, 7, 123]
BEAM = [30, 5, 88, 61, 42]


@torch.no_grad()
def make(name: str, out: Path) -> None:
    model = build(name)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)

    t: dict[str, torch.Tensor] = {}
    single = torch.tensor([SINGLE])
    reset_rope(model)
    t["single_input_ids"] = single
    t["single_logits"] = model(single).logits.contiguous()

    # Prefix of 3, then one token at a time through the KV cache.
    reset_rope(model)
    prefix = 3
    o = model(single[:, :prefix], use_cache=True)
    pieces, past = [o.logits], o.past_key_values
    for i in range(prefix, single.shape[1]):
        o = model(single[:, i : i + 1], past_key_values=past, use_cache=True)
        pieces.append(o.logits)
        past = o.past_key_values
    t["cached_logits"] = torch.cat(pieces, 1).contiguous()
    t["cached_prefix"] = torch.tensor([prefix])

    ids, mask = left_pad(BATCH, PAD)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    reset_rope(model)
    logits = model(ids, attention_mask=mask, position_ids=pos).logits
    t["batch_input_ids"], t["batch_attention_mask"], t["batch_position_ids"] = ids, mask, pos
    t["batch_logits"] = logits.contiguous()
    if "dynamic" not in name:
        for i, p in enumerate(BATCH):
            alone = model(torch.tensor([p])).logits[0]
            d = (alone - logits[i, -len(p) :]).abs().max().item()
            if d > 1e-5:
                fail(f"{name}: batch row {i} differs from its unbatched forward by {d}")
    save_file(t, str(out / "expected.safetensors"), metadata={"generator": "make_llama_fixtures.py"})

    cases = {}
    for use_cache in (True, False):
        full = generate(model, torch.tensor([GREEDY]), max_new_tokens=10, use_cache=use_cache)[0].tolist()
        key = "greedy" if use_cache else "greedy_nocache"
        cases[key] = {"prompt": GREEDY, "max_new_tokens": 10, "use_cache": use_cache,
                      "output_ids": strip_after_eos(GREEDY, full)}
    margin = min_greedy_margin(model, GREEDY, 10)
    if margin < 1e-3:
        print(f"WARNING: {name}: greedy top-2 margin {margin:.2e} is small", file=sys.stderr)

    prompts = [GREEDY, [40, 12, 87], BATCH[0]]
    bids, bmask = left_pad(prompts, PAD)
    out_b = generate(model, bids, bmask, max_new_tokens=8)
    width = bids.shape[1]
    rows = [strip_after_eos(p, p + out_b[i].tolist()[width:]) for i, p in enumerate(prompts)]
    cases["greedy_batch"] = {"prompts": prompts, "max_new_tokens": 8, "output_ids": rows}

    full = generate(model, torch.tensor([BEAM]), num_beams=3, max_new_tokens=8, length_penalty=1.0,
                    early_stopping=False)[0].tolist()
    cases["beam"] = {"prompt": BEAM, "num_beams": 3, "max_new_tokens": 8, "length_penalty": 1.0,
                     "early_stopping": False, "output_ids": strip_after_eos(BEAM, full)}

    doc = {
        "description": f"transformers {type(model).__name__} reference outputs (CPU, float32)",
        "num_parameters": model.num_parameters(),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "safetensors": safetensors.__version__},
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "greedy_min_margin": margin,
        "cases": cases,
    }
    (out / "expected.json").write_text(json.dumps(doc, indent=2) + "\n")
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"{name}: {total} bytes, margin {margin:.3f}, greedy {cases['greedy']['output_ids']}")
    if total > 200 * 1024:
        fail(f"{out} exceeds 200 KB")


def shard(src: Path, dst: Path) -> None:
    """llama_tiny's weights split into two shards with an index, as HF writes large models."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copy(src / "config.json", dst / "config.json")
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map, total = {}, 0
    for i, part in enumerate(halves):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, str(dst / fname), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = fname
            total += tensors[n].numel() * tensors[n].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    # transformers itself must load the sharded copy to the same logits.
    a = LlamaForCausalLM.from_pretrained(src).eval()
    b = LlamaForCausalLM.from_pretrained(dst).eval()
    x = torch.tensor([SINGLE])
    with torch.no_grad():
        if not torch.equal(a(x).logits, b(x).logits):
            fail("sharded copy does not reproduce llama_tiny")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-root", default=str(REPO_ROOT / "tests/fixtures"))
    args = ap.parse_args()
    root = Path(args.out_root)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for name in VARIANTS:
        make(name, root / name)
    shard(root / "llama_tiny", root / "llama_tiny_sharded")


if __name__ == "__main__":
    main()
