#!/usr/bin/env python3
"""Question-answering pipeline cases for tests/fixtures/bert_tiny_qa, from transformers 4.x.

transformers 5.x removed the question-answering pipeline, so this part runs under transformers
4.57.1 installed into a side folder (the rest of the venv -- torch, numpy, safetensors -- is
shared):

    .venv/bin/pip install --target .venv-tf4 transformers==4.57.1 'huggingface-hub<1.0' \
        'tokenizers>=0.22,<=0.23.0' --no-deps
    PYTHONPATH=.venv-tf4 .venv/bin/python tools/reference/make_bert_qa_fixtures.py [--out-root tests/fixtures]

make_bert_fixtures.py runs this at its end.  It needs the checkpoint that script wrote, and
replaces only the "pipeline" (and "pipeline_versions") keys of bert_tiny_qa/expected.json.
It also cross-checks, under 4.x, the model outputs in expected.safetensors, the hub-style
tokenizer cases and tokenizer_bert.json written by the 5.x script (mismatches are printed as
WARNINGs and listed in the report; they do not change any file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tokenizers
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, BertTokenizer, BertTokenizerFast, pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests/fixtures"
QA_DIR = FIXTURES / "bert_tiny_qa"

LONG_CONTEXT = (
    "john lives in paris. mary works in london. the city of berlin is the capital of germany. "
    "paul was born in rome in the year two thousand. the capital of france is paris and the "
    "capital of italy is rome. anna works for google in tokyo, and peter lives in madrid with "
    "his family. the old king died in vienna."
)
CASES = [
    ({"question": "where does john live?", "context": "john lives in paris and mary works in london."}, {}),
    ({"question": "where does john live?", "context": "john lives in paris and mary works in london."}, {"top_k": 3}),
    ({"question": "where was paul born?", "context": LONG_CONTEXT}, {"max_seq_len": 32, "doc_stride": 8, "max_answer_len": 5}),
    ({"question": "who works in london?", "context": "mary works in london."}, {"handle_impossible_answer": True}),
    # top_k=10 makes the null answer ("" at 0..0, score = p_start(CLS) * p_end(CLS)) show up mid-list.
    ({"question": "who works in london?", "context": "mary works in london."}, {"handle_impossible_answer": True, "top_k": 10}),
]

warnings: list[str] = []


def fail(msg: str) -> None:
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def warn(msg: str) -> None:
    print(f"WARNING: {msg}", file=sys.stderr)
    warnings.append(msg)


def to_json(x):
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_json(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x


@torch.no_grad()
def check_model_outputs() -> None:
    model = AutoModelForQuestionAnswering.from_pretrained(str(QA_DIR), attn_implementation="eager").eval()
    exp = load_file(str(QA_DIR / "expected.safetensors"))
    out = model(input_ids=exp["input_ids"], attention_mask=exp["attention_mask"], token_type_ids=exp["token_type_ids"])
    for k in ("start_logits", "end_logits"):
        d = (getattr(out, k) - exp[k]).abs().max().item()
        if d > 1e-5:
            fail(f"transformers {transformers.__version__} {k} differ from expected.safetensors by {d}")


def qa_cases() -> list[dict]:
    pipe = pipeline("question-answering", model=str(QA_DIR), tokenizer=str(QA_DIR), device="cpu")
    res = []
    for inputs, kwargs in CASES:
        output = to_json(pipe(**inputs, **kwargs))
        if kwargs.get("handle_impossible_answer") and kwargs.get("top_k", 1) > 1 and not any(o["answer"] == "" for o in output):
            fail("the null answer does not appear in the handle_impossible_answer top_k case")
        if isinstance(output, list):
            scores = [o["score"] for o in output]
            for a, b in zip(scores, scores[1:]):
                if a - b < 1e-5:
                    fail(f"near-tie in QA top_k scores {scores}")
        res.append({"inputs": inputs, "kwargs": kwargs, "output": output})
    return res


def cross_check_tokenizers() -> None:
    hub = FIXTURES / "bert_hub_tokenizer"
    doc = json.loads((hub / "expected.json").read_text(encoding="utf-8"))
    tok = AutoTokenizer.from_pretrained(str(hub))
    for c in doc["cases"]:
        args = [c["text"]] + ([c["text_pair"]] if "text_pair" in c else [])
        got = {k: list(v) for k, v in tok(*args, **c["kwargs"]).items() if k in c["output"]}
        if got != c["output"]:
            warn(f"hub tokenizer: transformers {transformers.__version__} gives {got} for {c['text']!r}, expected.json has {c['output']}")

    par = json.loads((FIXTURES / "tokenizer_bert.json").read_text(encoding="utf-8"))
    vocab = str(REPO_ROOT / par["vocab"])
    for key, lower in (("uncased", True), ("cased", False)):
        slow = BertTokenizer(vocab, do_lower_case=lower)
        fast = BertTokenizerFast(vocab, do_lower_case=lower)
        for c in par[key]:
            for name, t in (("slow", slow), ("fast", fast)):
                ids = t(c["text"])["input_ids"]
                if ids != c["input_ids"]:
                    warn(f"tokenizer_bert.json {key}: transformers {transformers.__version__} {name} gives {ids} for {c['text']!r}")
            offs = [list(o) for o in fast(c["text"], return_offsets_mapping=True)["offset_mapping"]]
            if offs != c["offsets"]:
                warn(f"tokenizer_bert.json {key}: offsets differ for {c['text']!r}")
    slow = BertTokenizer(vocab, do_lower_case=True)
    for c in par["pairs"]:
        e = slow(c["text"], c["text_pair"])
        if e["input_ids"] != c["input_ids"] or e["token_type_ids"] != c["token_type_ids"]:
            warn(f"tokenizer_bert.json pair {c['text']!r}/{c['text_pair']!r} differs under {transformers.__version__}")


def main() -> None:
    global FIXTURES, QA_DIR
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-root", default=str(FIXTURES), help="the fixtures make_bert_fixtures.py wrote (default tests/fixtures)")
    args = ap.parse_args()
    FIXTURES = Path(args.out_root)
    QA_DIR = FIXTURES / "bert_tiny_qa"
    if not transformers.__version__.startswith("4."):
        fail(f"needs transformers 4.x (PYTHONPATH=.venv-tf4), got {transformers.__version__}")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()

    check_model_outputs()
    cases = qa_cases()
    path = QA_DIR / "expected.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["pipeline"] = cases
    doc["pipeline_note"] = "question-answering pipeline cases come from transformers 4.x (5.x has no such pipeline); see pipeline_versions"
    doc["pipeline_versions"] = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "torch": torch.__version__}
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for c in cases:
        print(f"qa {c['kwargs']}: {c['output']}")

    cross_check_tokenizers()
    print(f"make_bert_qa_fixtures.py: {len(cases)} QA cases, {len(warnings)} cross-check warnings")


if __name__ == "__main__":
    main()
