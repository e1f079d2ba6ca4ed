#!/usr/bin/env python3
"""Reference GPT-2 BPE encodings for the Rust tokenizer tests.

Builds a tiktoken `Encoding` fully offline from the repo's
`crates/mf-tokenizers/assets/gpt2/vocab.json` (no `tiktoken.get_encoding`, which downloads), encodes
a set of deliberately awkward texts, and writes a JSON list of
`{"text": ..., "ids": [...]}`.

Every encoding is cross-checked against two independent implementations
before anything is written:

* transformers' `GPT2Tokenizer` built from vocab.json + merges.txt.  Note that
  in transformers 5.x this class is backed by the Rust `tokenizers` library
  (the pure-Python "slow" tokenizer no longer exists), so
* a small pure-Python port of OpenAI's original `encoder.py` BPE (merge ranks
  from merges.txt) is used as a genuinely slow, independent third opinion.

Any disagreement aborts with exit status 1.

Run:  .venv/bin/python tools/reference/make_tokenizer_fixtures.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import lru_cache
from pathlib import Path

import regex
import tiktoken
from transformers import GPT2Tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT / "crates" / "mf-tokenizers" / "assets" / "gpt2"

# GPT-2's pre-tokenisation regex (tiktoken spelling; equivalent to the
# original `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|...`).
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256

TEXTS = [
    "",
    "hello!",
    "Hello world",
    " Hello world",
    "I love Beijing, because",
    "我爱北京",
    "我爱北京天安门, and I love Beijing too.",
    "emoji: 😀🎉👍🏽 done",
    "👨‍👩‍👧‍👦 family",
    "café naïve résumé Ångström",
    "Übergrößenträger straße",
    "Привет, мир!",
    "こんにちは世界",
    "مرحبا بالعالم",
    "   leading spaces",
    "trailing spaces   ",
    "  both sides  ",
    "multiple    internal     spaces",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\n",
    "\n\n\n",
    "windows\r\nline endings\r\n",
    " \t \n mixed whitespace \t\n ",
    "12345 67.89",
    "3.14159265358979 1,000,000 -42 +7e10",
    "don't I'll we've they're she'd it's I'm",
    "DON'T SHOUT'S",
    "'quoted' \"double\" `back`",
    "def foo(x):\n    return x ** 2  # square\n",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "<html><body class=\"x\">&amp;</body></html>",
    "https://example.com/path?q=1&r=two#frag",
    "user@example.com",
    "Hello<|endoftext|>World",
    "first doc.<|endoftext|> second doc",
    "<|endoftext|>",
    "!!!???...,,,;;;",
    "a" * 64,
    "The quick brown fox jumps over the lazy dog.",
    "hyphen-ated and under_scored and CamelCase",
    "\u00a0non-breaking\u00a0space and zero\u200bwidth",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable-unicode map (from encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def load_vocab() -> dict[str, int]:
    return json.loads((ASSETS / "vocab.json").read_text(encoding="utf-8"))


def build_tiktoken(vocab: dict[str, int]) -> tiktoken.Encoding:
    """tiktoken wants raw-byte tokens -> rank.  vocab.json stores tokens in the
    bytes_to_unicode alphabet, and its ids *are* the BPE ranks, so inverting
    the alphabet is all that is needed."""
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(byte_decoder[c] for c in tok): idx for tok, idx in vocab.items() if tok != ENDOFTEXT}
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise SystemExit("vocab.json ids are not a dense 0..N-1 rank table")
    if vocab.get(ENDOFTEXT) != ENDOFTEXT_ID:
        raise SystemExit(f"{ENDOFTEXT} is not id {ENDOFTEXT_ID} in vocab.json")
    return tiktoken.Encoding(
        name="gpt2_offline",
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
    )


class PythonBPE:
    """OpenAI's original GPT-2 encoder.py algorithm, merge ranks from merges.txt."""

    def __init__(self, vocab: dict[str, int]):
        self.encoder = vocab
        self.byte_encoder = bytes_to_unicode()
        lines = (ASSETS / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:] if line.strip()]  # skip "#version"
        self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
        self.pat = regex.compile(PAT_STR)
        self.bpe = lru_cache(maxsize=None)(self._bpe)

    def _bpe(self, token: str) -> tuple[str, ...]:
        word = tuple(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str) -> list[int]:
        # Special tokens are matched verbatim before any pre-tokenisation.
        ids: list[int] = []
        for k, chunk in enumerate(text.split(ENDOFTEXT)):
            if k:
                ids.append(ENDOFTEXT_ID)
            for piece in self.pat.findall(chunk):
                mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
                ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO_ROOT / "tests/fixtures/tokenizer_gpt2.json"))
    args = ap.parse_args()

    vocab = load_vocab()
    enc = build_tiktoken(vocab)
    py_bpe = PythonBPE(vocab)
    # transformers 5.x: pass `vocab=`/`merges=` paths.  The old
    # `vocab_file=`/`merges_file=` keywords are silently ignored there and give
    # an empty tokenizer, hence the size check.
    hf = GPT2Tokenizer(vocab=str(ASSETS / "vocab.json"), merges=str(ASSETS / "merges.txt"))
    if len(hf) != 50257:
        raise SystemExit(f"transformers GPT2Tokenizer loaded {len(hf)} tokens, expected 50257")

    cases = []
    bad = 0
    for text in TEXTS:
        ids = enc.encode(text, allowed_special="all")
        # <|endoftext|> is registered as a special (added) token in the HF
        # tokenizer via its bos/eos/unk defaults, so it is split out before BPE.
        hf_ids = hf.encode(text, add_special_tokens=False)
        py_ids = py_bpe.encode(text)
        for who, other in (("transformers", hf_ids), ("python-bpe", py_ids)):
            if other != ids:
                bad += 1
                print(f"MISMATCH ({who}) for {text!r}:\n  tiktoken={ids}\n  {who}={other}", file=sys.stderr)
        # Round trip guards against a broken byte table.
        if enc.decode(ids) != text:
            bad += 1
            print(f"ROUND-TRIP FAILURE for {text!r}", file=sys.stderr)
        cases.append({"text": text, "ids": ids})

    anchors = {"hello!": [31373, 0], "Hello world": [15496, 995], "I love Beijing, because": [40, 1842, 11618, 11, 780]}
    for text, want in anchors.items():
        got = enc.encode(text)
        if got != want:
            bad += 1
            print(f"ANCHOR MISMATCH for {text!r}: {got} != {want}", file=sys.stderr)
    if bad:
        raise SystemExit(f"{bad} mismatches; fixture not written")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # One case per line: diff-friendly, still plain JSON (UTF-8, not escaped).
    body = ",\n".join(" " + json.dumps(c, ensure_ascii=False) for c in cases)
    out.write_text("[\n" + body + "\n]\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases, {out.stat().st_size} bytes -> {out}")


if __name__ == "__main__":
    main()
