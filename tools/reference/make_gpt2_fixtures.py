#!/usr/bin/env python3
"""Generate a tiny, deterministic GPT-2 checkpoint plus reference outputs.

The Rust port (mindformers-rs) loads the checkpoint written here and must
reproduce, bit-for-bit in token space and to ~1e-4 in logit space, what
HuggingFace transformers computes for the same weights.  Everything is
produced on CPU in float32 so the numbers do not depend on the machine.

Output directory layout (default: tests/fixtures/gpt2_tiny):

    config.json            HF GPT2Config (what the Rust config loader reads)
    model.safetensors      weights, HF naming (lm_head is tied -> not stored)
    expected.safetensors   forward-pass inputs and logits (see below)
    expected.json          generation cases produced by `model.generate`

Run:  .venv/bin/python tools/reference/make_gpt2_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import safetensors
import torch
import transformers
from safetensors.torch import save_file
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

SEED = 0
VOCAB = 1000
BOS = 998
EOS = 999
# Batched cases left-pad with token 0.  We deliberately use a pad id that is
# different from EOS so that the attention mask is the *only* thing telling the
# model what is padding (the Rust side must honour the mask, not sniff ids).
BATCH_PAD = 0
EOS_ROW_SCALE = 1.5

REPO_ROOT = Path(__file__).resolve().parents[2]


def build_model() -> GPT2LMHeadModel:
    torch.manual_seed(SEED)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,  # GPT-2 convention: no dedicated pad token, reuse eos
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(config).to(torch.float32)

    # HF's default init (std=0.02) makes a 2-layer/32-wide model nearly
    # uniform: logits differ in the 3rd-4th decimal, so greedy/beam choices
    # would hinge on float rounding and the Rust port could legitimately pick a
    # different argmax.  Re-initialise with much larger weights so the logits
    # are well separated.  A dedicated generator + fixed parameter order keeps
    # this independent of anything else that touches the global RNG.
    gen = torch.Generator().manual_seed(SEED)
    layer_norm_params = set()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            layer_norm_params.add(id(module.weight))
    with torch.no_grad():
        # named_parameters() de-duplicates tied tensors, so lm_head.weight
        # (== transformer.wte.weight) is initialised exactly once.
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if id(p) in layer_norm_params:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.3 * noise)
        # With plain N(0, 0.3) weights greedy decoding never picks eos (0 of
        # 2000 random prompts x 20 steps), so no case would exercise
        # stop-on-eos or the pad-after-finish path of batched generation.
        # Lengthening the (tied) eos embedding row raises its logit magnitude
        # just enough that ~2% of random prompts emit eos within 20 steps.
        model.transformer.wte.weight[EOS] *= EOS_ROW_SCALE
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "lm_head must stay tied"

    # Pin the model-level generation defaults to just the special tokens so no
    # hidden default (e.g. from a future transformers version) leaks into the
    # cases below; every case additionally passes its knobs explicitly.
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    model.eval()
    return model


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenizer-free left padding: returns (input_ids, attention_mask) int64."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


def generation_position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids exactly as transformers 5.x `generate` builds them.

    See GenerationMixin._prepare_position_ids_for_generation: cumsum of the mask
    minus one, with pad slots filled with 0 (transformers 4.x GPT-2 used 1;
    the value is irrelevant for real tokens because pads are masked out).
    """
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 0)


def strip_after_eos(prompt: list[int], full: list[int], eos: int) -> list[int]:
    """Prompt + generated tokens, cut right after the first generated eos.

    After a sequence finishes, generate() keeps emitting the pad id to keep the
    batch rectangular; those tokens are an artefact, not model output.
    """
    gen = full[len(prompt) :]
    if eos in gen:
        gen = gen[: gen.index(eos) + 1]
    return list(prompt) + gen


@torch.no_grad()
def generate(model, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    kwargs.setdefault("do_sample", False)
    kwargs.setdefault("num_beams", 1)
    kwargs.setdefault("eos_token_id", EOS)
    kwargs.setdefault("pad_token_id", EOS)
    kwargs.setdefault("bos_token_id", BOS)
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def fail(msg: str) -> None:
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


@torch.no_grad()
def greedy_batch_scan(model, n: int, plen: int, max_new_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cheap batched greedy decoding of `n` random prompts (full recompute, no
    cache, no padding since all prompts share a length).  Used only to *search*
    for interesting prompts; every recorded output comes from model.generate().

    Returns (prompts [n, plen], generated [n, max_new_tokens]).
    """
    gen = torch.Generator().manual_seed(seed)
    # Ids in [1, BOS): never the batch pad (0), bos or eos.
    prompts = torch.randint(1, BOS, (n, plen), generator=gen)
    seq = prompts.clone()
    for _ in range(max_new_tokens):
        nxt = model(seq, attention_mask=torch.ones_like(seq)).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return prompts, seq[:, plen:]


def first_eos_prompt(model, plen: int, max_new_tokens: int, seed: int, min_step: int = 1) -> list[int] | None:
    """First random prompt whose greedy continuation emits EOS at a step in
    [min_step, max_new_tokens - 1), i.e. stops strictly early."""
    prompts, generated = greedy_batch_scan(model, 2000, plen, max_new_tokens, seed)
    for i in range(prompts.shape[0]):
        hits = (generated[i] == EOS).nonzero().flatten().tolist()
        if hits and min_step <= hits[0] < max_new_tokens - 1:
            return prompts[i].tolist()
    return None


@torch.no_grad()
def find_eos_case(model, max_new_tokens: int) -> dict:
    """A greedy case that stops on eos before max_new_tokens."""
    eos_id, how = EOS, "natural"
    prompt = first_eos_prompt(model, 6, max_new_tokens, seed=1234, min_step=3)
    if prompt is None:
        # Fallback: declare the token greedy emits at step k>=3 to be "eos" for
        # this case, choosing one not seen in steps 0..k-1 and not bos/eos.
        prompts, generated = greedy_batch_scan(model, 2000, 6, max_new_tokens, seed=1234)
        for i in range(prompts.shape[0]):
            g = generated[i].tolist()
            k = next((k for k in range(3, max_new_tokens - 1) if g[k] not in g[:k] and g[k] < BOS), None)
            if k is not None:
                prompt, eos_id, how = prompts[i].tolist(), g[k], f"synthetic (token greedy emits at step {k})"
                break
    if prompt is None:
        fail("could not construct an eos_stop case")
    out = generate(
        model,
        torch.tensor([prompt]),
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )[0].tolist()
    if out[-1] != eos_id or len(out) - len(prompt) >= max_new_tokens:
        fail(f"eos_stop case did not stop early: {out}")
    print(f"eos_stop: eos_token_id={eos_id} ({how}), {len(out) - len(prompt)} new tokens")
    return {
        "prompt": prompt,
        "max_new_tokens": max_new_tokens,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "eos_origin": how,
        "output_ids": out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO_ROOT / "tests/fixtures/gpt2_tiny"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # avoid thread-count dependent reduction order

    model = build_model()

    # ---- checkpoint -------------------------------------------------------
    model.save_pretrained(out, safe_serialization=True)
    # The Rust loader's contract is config.json + model.safetensors only;
    # generation defaults are passed explicitly by every case below.
    gen_cfg = out / "generation_config.json"
    if gen_cfg.exists():
        gen_cfg.unlink()

    # ---- forward-pass references -----------------------------------------
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        single = torch.tensor([[5, 17, 300, 42, 7, 123, 64]], dtype=torch.long)
        tensors["single_input_ids"] = single
        tensors["single_logits"] = model(single).logits.float().contiguous()

        # Lengths 9, 5, 3, left padded to 9 with id 0.
        batch_prompts = [
            [11, 250, 3, 77, 512, 901, 36, 8, 140],
            [640, 21, 99, 305, 7],
            [400, 12, 870],
        ]
        ids, mask = left_pad(batch_prompts, BATCH_PAD)
        pos = generation_position_ids(mask)
        logits = model(ids, attention_mask=mask, position_ids=pos).logits.float()
        tensors["batch_input_ids"] = ids
        tensors["batch_attention_mask"] = mask
        tensors["batch_position_ids"] = pos
        tensors["batch_logits"] = logits.contiguous()

        # Sanity: each row's real-token logits must match running that prompt
        # alone; otherwise the batch reference itself would be misleading.
        for i, p in enumerate(batch_prompts):
            alone = model(torch.tensor([p])).logits[0]
            diff = (alone - logits[i, -len(p) :]).abs().max().item()
            if diff > 1e-5:
                fail(f"batch row {i} disagrees with unbatched forward: {diff}")
        # Sanity: the pad-slot position value (0 in 5.x, 1 in 4.x) must not
        # affect real-token logits.
        alt = model(ids, attention_mask=mask, position_ids=pos.masked_fill(mask == 0, 1)).logits
        if (alt - logits)[mask.bool()].abs().max().item() > 1e-6:
            fail("pad position ids leak into real-token logits")
        if not torch.isfinite(logits).all():
            fail("non-finite batch logits")
    save_file(tensors, str(out / "expected.safetensors"), metadata={"generator": "make_gpt2_fixtures.py"})

    # ---- generation references -------------------------------------------
    cases: dict = {}

    p = [5, 17, 300, 42, 7, 123]
    full = generate(model, torch.tensor([p]), max_new_tokens=20)[0].tolist()
    cases["greedy"] = {"prompt": p, "max_new_tokens": 20, "eos_token_id": EOS, "output_ids": strip_after_eos(p, full, EOS)}

    # The middle (shortest) prompt is chosen so that it hits eos well before
    # max_new_tokens: generate() then keeps appending pad ids to that row while
    # the others continue, which is exactly the bookkeeping the port must match.
    early = first_eos_prompt(model, 3, 12, seed=4321, min_step=2)
    if early is None:
        fail("no length-3 prompt stops early within 12 tokens")
    prompts = [[5, 17, 300, 42, 7, 123], early, [11, 250, 3, 77, 512, 901, 36, 8, 140]]
    ids, mask = left_pad(prompts, BATCH_PAD)
    batch_out = generate(model, ids, mask, max_new_tokens=12, pad_token_id=BATCH_PAD)
    width = ids.shape[1]
    outputs = []
    for i, prompt in enumerate(prompts):
        row = batch_out[i].tolist()
        seq = strip_after_eos(prompt, prompt + row[width:], EOS)
        # Cross-check against unbatched generation: padding + mask must be
        # invisible, which is also what the Rust implementation will assert.
        solo = generate(model, torch.tensor([prompt]), max_new_tokens=12, pad_token_id=BATCH_PAD)[0].tolist()
        solo = strip_after_eos(prompt, solo, EOS)
        if solo != seq:
            print(f"WARNING: batched vs one-by-one generation differ for prompt {i}", file=sys.stderr)
            fail(f"batched={seq} solo={solo}")
        outputs.append(seq)
    cases["greedy_batch"] = {
        "prompts": prompts,
        "max_new_tokens": 12,
        "pad_token_id": BATCH_PAD,
        "eos_token_id": EOS,
        "padding_side": "left",
        "output_ids": outputs,
        # Raw generate() result: left-padded prompts, then generated tokens,
        # with pad_token_id appended to rows that already emitted eos.
        "padded_output_ids": batch_out.tolist(),
    }

    p = [300, 5, 88, 610, 42]
    full = generate(model, torch.tensor([p]), num_beams=3, max_new_tokens=10, length_penalty=1.0, early_stopping=False)[0].tolist()
    cases["beam"] = {
        "prompt": p,
        "num_beams": 3,
        "max_new_tokens": 10,
        "length_penalty": 1.0,
        "early_stopping": False,
        "eos_token_id": EOS,
        "output_ids": strip_after_eos(p, full, EOS),
    }

    p = [42, 42, 7, 123, 64, 5]
    full = generate(model, torch.tensor([p]), repetition_penalty=1.3, max_new_tokens=15)[0].tolist()
    no_pen = generate(model, torch.tensor([p]), max_new_tokens=15)[0].tolist()
    if full == no_pen:
        print("WARNING: repetition_penalty case equals plain greedy (case is weak)", file=sys.stderr)
    cases["repetition_penalty"] = {
        "prompt": p,
        "repetition_penalty": 1.3,
        "max_new_tokens": 15,
        "eos_token_id": EOS,
        "output_ids": strip_after_eos(p, full, EOS),
    }

    cases["eos_stop"] = find_eos_case(model, max_new_tokens=20)

    doc = {
        "description": "Reference generations from transformers GPT2LMHeadModel.generate (do_sample=False, CPU, float32)",
        "num_parameters": model.num_parameters(),
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
        },
        "output_ids_semantics": "prompt (unpadded) + generated tokens, truncated right after the first generated eos",
        "cases": cases,
    }
    (out / "expected.json").write_text(json.dumps(doc, indent=2) + "\n")

    # ---- report -------------------------------------------------------------
    total = 0
    for f in sorted(out.iterdir()):
        size = f.stat().st_size
        total += size
        print(f"{size:>9}  {f}")
    print(f"{total:>9}  total")
    for name, case in cases.items():
        print(f"{name}: {case['output_ids']}")
    if total > 600 * 1024:
        fail("fixture directory exceeds ~600 KB")


if __name__ == "__main__":
    main()
