"""Decode speed of Hugging Face transformers `generate` (PyTorch eager) on a GPT-2 or LLaMA
shaped model with random weights: the baseline `cargo xtask bench generate` compares
mindformers-rs with. `--model llama` builds a ~125M LLaMA with grouped-query attention
(12 layers, hidden 768, 12 heads, 4 kv heads, MLP 2048, vocabulary 32000).

Prints one JSON line: {"impl", "batch", "prompt_len", "new_tokens", "seconds", "tokens_per_s",
"peak_rss_mb", "threads"}.
"""
import argparse
import json
import resource
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--model", choices=["gpt2", "llama"], default="gpt2")
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    args = ap.parse_args()
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "llama":
        cfg = LlamaConfig(
            vocab_size=32000,
            hidden_size=args.hidden,
            intermediate_size=args.intermediate,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.kv_heads,
            max_position_embeddings=2048,
        )
        model = LlamaForCausalLM(cfg).eval().to(args.device, dtype)
        pad = cfg.eos_token_id
    else:
        cfg = GPT2Config(n_layer=args.layers, n_embd=args.hidden, n_head=args.heads)
        model = GPT2LMHeadModel(cfg).eval().to(args.device, dtype)
        pad = cfg.eos_token_id
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt_len)).to(args.device)
    mask = torch.ones_like(ids)
    kwargs = dict(
        attention_mask=mask,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,  # random weights may emit eos; keep the work fixed
        do_sample=False,
        num_beams=1,
        pad_token_id=pad,
    )
    with torch.inference_mode():
        model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = model.generate(ids, **kwargs)
            if args.device != "cpu":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    assert out.shape[1] == args.prompt_len + args.new_tokens
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "impl": "transformers",
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "seconds": best,
        "tokens_per_s": args.batch * args.new_tokens / best,
        "peak_rss_mb": rss_mb,
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
