"""Shared reference-output writer for the tiny causal-LM fixtures (Bloom, GLM, ...).

Given a transformers model, writes to a fixture directory exactly what
tests/<family>_parity.rs reads, in the layout make_llama_fixtures.py introduced:

    config.json + model.safetensors  the model as transformers saves it (HF names)
    expected.safetensors             single_logits, cached_logits (prefix of 3, then one token
                                     at a time through transformers' cache), batch_logits for
                                     a left-padded batch (with its mask and position ids)
    expected.json                    greedy ids with and without cache, batched greedy with
                                     left padding, 3-beam search ids

Not a script: imported by make_bloom_fixtures.py and make_glm_fixtures.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file

BOS = 1
EOS = 2
PAD = 0

SINGLE = [5, 17, 100, 42, 7, 123, 64, 9, 88, 31, 77, 14]
BATCH = [[11, 25, 3, 77, 51, 90, 36, 8, 14, 66, 101], [64, 21, 99, 35, 7, 44], [40, 12, 87]]
GREEDY = [5, 17, 100, 42, 7, 123]
BEAM = [30, 5, 88, 61, 42]


def fail(msg: str) -> None:
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def randomize(model, seed: int) -> None:
    """HF's std=0.02 init makes a tiny model's logits nearly uniform, so argmax choices would
    hinge on rounding. Larger weights separate them; a dedicated generator keeps the values
    independent of anything else touching the global RNG."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():  # tied tensors appear once
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in pname:
                p.copy_(1.0 + 0.1 * noise)
            elif pname.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.3 * noise)


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
        logits = model(seq).logits[0, -1]
        top = logits.topk(2).values
        worst = min(worst, (top[0] - top[1]).item())
        seq = torch.cat([seq, logits.argmax().view(1, 1)], 1)
    return worst


@torch.no_grad()
def make(name: str, model, out: Path, generator: str, uses_position_ids: bool = True) -> None:
    """Saves `model` to `out` with its reference outputs. `uses_position_ids` is False for
    models that take positions from the attention mask only (Bloom's ALiBi)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)

    t: dict[str, torch.Tensor] = {}
    single = torch.tensor([SINGLE])
    t["single_input_ids"] = single
    t["single_logits"] = model(single).logits.contiguous()

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
    kw = {"position_ids": pos} if uses_position_ids else {}
    logits = model(ids, attention_mask=mask, **kw).logits
    t["batch_input_ids"], t["batch_attention_mask"], t["batch_position_ids"] = ids, mask, pos
    t["batch_logits"] = logits.contiguous()
    # Batched and single runs sum in different orders: allow float32 rounding at the logit scale.
    tol = 1e-5 * max(1.0, logits.abs().max().item())
    for i, p in enumerate(BATCH):
        alone = model(torch.tensor([p])).logits[0]
        d = (alone - logits[i, -len(p) :]).abs().max().item()
        if d > tol:
            fail(f"{name}: batch row {i} differs from its unbatched forward by {d}")
    save_file(t, str(out / "expected.safetensors"), metadata={"generator": generator})

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


def shard(src: Path, dst: Path, model_cls) -> None:
    """src's weights split into two shards with an index, as HF writes large models; transformers
    itself must load the sharded copy to the same logits."""
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
    a = model_cls.from_pretrained(src).eval()
    b = model_cls.from_pretrained(dst).eval()
    x = torch.tensor([SINGLE])
    with torch.no_grad():
        if not torch.equal(a(x).logits, b(x).logits):
            fail(f"sharded copy does not reproduce {src.name}")
