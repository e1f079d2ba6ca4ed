"""Encoder inference throughput of the transformers baseline: a BERT-base-shaped (110M)
BertForSequenceClassification with random weights, forward under torch.no_grad on a fixed
batch of random ids, what `cargo xtask bench encode` compares mindformers-rs with. Prints
one JSON line (the median of the timed repeats)."""
import argparse
import json
import resource
import statistics
import time

import torch
from transformers import BertConfig, BertForSequenceClassification


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()
    ids = torch.randint(1000, 30000, (args.batch, args.seq_length))
    mask = torch.ones_like(ids)
    times = []
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({
        "impl": "transformers",
        "seconds": med,
        "seqs_per_s": args.batch / med,
        "times": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
