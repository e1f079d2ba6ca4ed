"""Writes assets/corpus/counting.txt: short counting sequences in English number words.

The demo trains a small GPT-2 on it; the pattern is regular enough to be learned in a few
minutes on two CPU cores, so the generated continuation shows the model learned something.
Deterministic (fixed seed): rerunning reproduces the committed file byte for byte.
"""
import random
from pathlib import Path

WORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen twenty").split()


def main():
    rng = random.Random(1234)
    lines = []
    for _ in range(6000):
        length = rng.randint(4, 9)
        if rng.random() < 0.75:
            start = rng.randint(0, len(WORDS) - length)
            seq = WORDS[start:start + length]
            head = "An increasing sequence:"
        else:
            start = rng.randint(length - 1, len(WORDS) - 1)
            seq = WORDS[start - length + 1:start + 1][::-1]
            head = "A decreasing sequence:"
        lines.append(f"{head} {', '.join(seq)}.")
    out = Path(__file__).resolve().parents[2] / "assets" / "corpus" / "counting.txt"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} ({len(lines)} lines, {out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
