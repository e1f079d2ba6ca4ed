"""Training throughput of the PyTorch eager baseline (transformers GPT2LMHeadModel +
torch.optim.AdamW) on random tokens: what `cargo xtask bench train` compares mindformers-rs with.
`--bf16` runs forward under bf16 autocast on `--device` (f32 weights and optimizer), the PyTorch
counterpart of the Trainer's `bf16 = true`.

The loss is next-token cross-entropy on `seq_length + 1`-token samples (inputs = tokens[:-1],
labels = tokens[1:]), as the mindformers-rs Trainer computes it. Prints one JSON line.
"""
import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq-length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--bf16", action="store_true", help="torch.autocast(bfloat16), f32 weights")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=args.layers, n_embd=args.hidden, n_head=args.heads, n_positions=1024)
    model = GPT2LMHeadModel(cfg).train().to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    data = torch.randint(0, cfg.vocab_size, (args.warmup + args.steps, args.batch, args.seq_length + 1))
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        x = data[step].to(args.device)
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert torch.isfinite(loss)  # reads the loss: the step has finished on any device
        times.append(time.perf_counter() - t0)
    secs = sum(times[args.warmup:]) / args.steps
    print(json.dumps({
        "impl": "pytorch",
        "steps_per_s": 1 / secs,
        "tokens_per_s": args.batch * args.seq_length / secs,
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
