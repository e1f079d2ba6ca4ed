#!/usr/bin/env python3
"""Generate tiny, deterministic BERT-family checkpoints, tokenizers and reference outputs.

Everything is built offline from configs (random weights) and local vocab files, on CPU in
float32 with eager attention, so re-running rewrites identical files.

Writes (all under tests/fixtures/):

    bert_tiny_vocab.txt            ~600-token WordPiece vocab cut from crates/mf-tokenizers/assets/bert-base-uncased/vocab.txt
    bert_tiny_{base,mlm,seqcls,seqcls_multilabel,tokcls,qa}/
        config.json, model.safetensors       model.save_pretrained (HF names)
        vocab.txt, tokenizer.json, tokenizer_config.json   tokenizer (small vocab, uncased)
        expected.safetensors                 padded batch of 3 + each row alone + labels/loss
        expected.json                        {"texts", "pipeline": [cases], ...}
    roberta_tiny_{mlm,seqcls}/, xlmr_tiny_tokcls/
        config.json, model.safetensors, expected.safetensors (ids only, no tokenizer)
    tokenizer_bert.json            slow/fast BertTokenizer parity cases on the real vocab
    bert_hub_tokenizer/            tokenizer.json with TemplateProcessing + fixed padding, and
                                   expected.json with what AutoTokenizer returns for it

The question-answering pipeline cases of bert_tiny_qa come from transformers 4.x (5.x removed
that pipeline): this script ends by running make_bert_qa_fixtures.py with
PYTHONPATH=.venv-tf4 (skip with --skip-qa).

Run:  .venv/bin/python tools/reference/make_bert_fixtures.py [--skip-qa] [--out-root tests/fixtures]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from safetensors.torch import save_file
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertTokenizerFast,
    BertTokenizerLegacy,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForTokenClassification,
    pipeline,
)

SEED = 0
REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests/fixtures"
REAL_VOCAB = REPO_ROOT / "crates/mf-tokenizers/assets/bert-base-uncased/vocab.txt"
SMALL_VOCAB = FIXTURES / "bert_tiny_vocab.txt"
TF4_DIR = REPO_ROOT / ".venv-tf4"
MODEL_MAX_LENGTH = 64  # = max_position_embeddings of the tiny BERTs

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Common words, all present in the real bert-base-uncased vocab (checked below).  "johnson" and
# "berliner" are deliberately absent so that WordPiece splits them (john ##son, berlin ##er).
WORDS = """
the a an of and or but not no yes to in on at by for with from into over under about after before
between through during without within is was are were be been being am has have had do does did
will would can could should may might must shall i you he she it we they me him her us them my
your his its our their this that these those there here what where who when why how which whose
whom john mary paul james david michael peter george anna maria sarah tom anne paris london berlin
rome madrid tokyo moscow vienna china japan india france germany italy spain england russia europe
america canada city country capital town world state river street home house school university
company government team club lives lived live works worked work born died move moved went go goes
come came see saw say said make made get got take took give gave know knew think thought want like
likes liked love loves loved hate hated play played plays good bad great terrible best worst new
old big small long short high low first last early late young little large few many much more most
other same different movie film book music song story game show art food water time year years day
days week night morning life people man men woman women child children family friend friends one
two three four five six seven eight nine ten hundred thousand million very really so too also only
just still even again never always often now then today happy sad nice beautiful boring funny
interesting awful amazing excellent poor wonderful president king queen prince war peace law party
police army church name named called known part end way place side case point group number fact
area word words red blue green black white north south east west york united states national
international american british french german football soccer tennis sports politics science
player players election minister fire air earth sun moon sea all some any each every both either
neither such own up down out off back away around well if because while until since though although
than as car money power job business market system program question answer problem student teacher
doctor computer phone news paper letter table door window road bridge park hotel restaurant
hospital station airport office room museum library garden village island mountain lake google
microsoft apple met meet visited visit won win speech tower hello speak speaks language english
car cars bus train plane ship horse dog cat bird fish tree flower grass rain snow wind summer winter
spring autumn january february march april june july august september october november december
monday friday sunday open close start stop begin began read write wrote sing sang dance eat drink
run ran walk walked sleep help find found lose lost keep kept hold held bring brought buy bought
sell sold pay paid learn teach told tell ask asked feel felt seem seemed try tried leave left
""".split()
EXTRA_PIECES = ["##s", "##ing", "##ed", "##ly", "##er", "##son", "##ton", "##est", "##ness"]
NOT_IN_SMALL_VOCAB = ["johnson", "berliner"]

TOKCLS_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
SEQCLS_LABELS = ["negative", "neutral", "positive"]
MULTILABEL_LABELS = ["sports", "politics", "science", "music"]


def fail(msg: str) -> None:
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def read_vocab(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def to_json(x):
    """Pipeline outputs -> plain JSON values (numpy/torch scalars -> Python int/float)."""
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    if isinstance(x, torch.Tensor):
        return to_json(x.tolist())
    if isinstance(x, np.ndarray):
        return to_json(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x


def versions() -> dict:
    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
    }


def write_json(path: Path, doc) -> None:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# vocab + tokenizer
# ---------------------------------------------------------------------------------------------


def build_small_vocab() -> list[str]:
    real = read_vocab(REAL_VOCAB)
    real_set = set(real)
    singles = [t for t in real if len(t) == 1 and 0x21 <= ord(t) <= 0x7E]
    pieces = ["##" + c for c in string.ascii_lowercase + string.digits]
    out: list[str] = []
    for tok in SPECIALS + singles + pieces + WORDS + EXTRA_PIECES:
        if tok not in real_set:
            fail(f"{tok!r} is not in the real vocab")
        if tok not in out:
            out.append(tok)
    for w in NOT_IN_SMALL_VOCAB:
        if w in out:
            fail(f"{w!r} must stay out of the small vocab")
    return out


def make_tokenizer(vocab: list[str], **kw) -> BertTokenizerFast:
    # transformers 5.x: BertTokenizerFast is BertTokenizer (tokenizers backend). Its vocab
    # argument is `vocab` (a dict or a path); `vocab_file=` is silently ignored and gives a
    # 5-token vocab, so pass the dict.
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, model_max_length=MODEL_MAX_LENGTH, **kw)


def save_tokenizer(tok, vocab: list[str], out: Path) -> None:
    tok.save_pretrained(out)
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")


def check_slow_fast(fast, slow, texts) -> None:
    """The tiny models' texts must tokenize identically with the Python (legacy) tokenizer."""
    for t in texts:
        a, b = (t, None) if isinstance(t, str) else t
        f = fast(a, b)["input_ids"]
        s = slow(a, b)["input_ids"]
        if f != s:
            fail(f"slow/fast tokenizers disagree on {t!r}: {f} vs {s}")


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


def bert_config(vocab_size: int, **kw) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        initializer_range=0.3,
        pad_token_id=0,
        attn_implementation="eager",
        **kw,
    )


def roberta_kwargs(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=66,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.3,
        layer_norm_eps=1e-5,
        attn_implementation="eager",
    )


def build(cls, config):
    torch.manual_seed(SEED)
    model = cls(config).to(torch.float32)
    model.eval()
    return model


def save_model(model, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    gen_cfg = out / "generation_config.json"
    if gen_cfg.exists():
        gen_cfg.unlink()


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------


def encode_rows(tok, rows) -> tuple[dict[str, torch.Tensor], list[dict[str, list[int]]]]:
    """Right-padded batch from texts or (text, text_pair) rows; also returns each row's encoding."""
    encs = []
    for r in rows:
        a, b = (r, None) if isinstance(r, str) else r
        e = tok(a, b)
        encs.append({k: list(e[k]) for k in ("input_ids", "token_type_ids", "attention_mask")})
    width = max(len(e["input_ids"]) for e in encs)
    batch = {k: torch.zeros((len(rows), width), dtype=torch.long) for k in ("input_ids", "attention_mask", "token_type_ids")}
    batch["input_ids"].fill_(tok.pad_token_id)
    for i, e in enumerate(encs):
        n = len(e["input_ids"])
        for k in batch:
            batch[k][i, :n] = torch.tensor(e[k])
    # Cross-check against the tokenizer's own padding.
    ref = tok.pad([dict(e) for e in encs], padding=True, return_tensors="pt")
    for k in batch:
        if not torch.equal(ref[k].long(), batch[k]):
            fail(f"manual padding differs from tokenizer.pad for {k}")
    return batch, encs


def roberta_rows(vocab_size: int, lengths: list[int], seed: int) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:  # n = total length including <s> and </s>
        body = torch.randint(3, vocab_size, (n - 2,), generator=gen).tolist()
        rows.append([0] + body + [2])
    width = max(lengths)
    ids = torch.full((len(rows), width), 1, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}, rows


OUTPUT_KEYS = {
    "base": ["last_hidden_state", "pooler_output"],
    "mlm": ["logits"],
    "seqcls": ["logits"],
    "tokcls": ["logits"],
    "qa": ["start_logits", "end_logits"],
}


@torch.no_grad()
def forward_expected(model, kind: str, batch: dict[str, torch.Tensor], labels: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {k: v.clone().contiguous() for k, v in batch.items()}
    out = model(**batch)
    for key in OUTPUT_KEYS[kind]:
        val = getattr(out, key).float()
        if not torch.isfinite(val).all():
            fail(f"non-finite {key}")
        tensors[key] = val.contiguous()

    lengths = batch["attention_mask"].sum(-1).tolist()
    for i, n in enumerate(lengths):
        row = {k: v[i : i + 1, :n] for k, v in batch.items() if k != "attention_mask"}
        alone = model(**row)
        tensors[f"row{i}_input_ids"] = row["input_ids"].clone().contiguous()
        if "token_type_ids" in row:
            tensors[f"row{i}_token_type_ids"] = row["token_type_ids"].clone().contiguous()
        for key in OUTPUT_KEYS[kind]:
            val = getattr(alone, key).float().contiguous()
            tensors[f"row{i}_{key}"] = val
            # Sanity: padding + mask must be invisible to the real tokens.
            padded = tensors[key][i : i + 1]
            if key not in ("pooler_output",) and kind != "seqcls":  # per-token outputs
                padded = padded[:, :n]
            diff = (padded - val).abs().max().item()
            if diff > 1e-5:
                fail(f"{kind}: padded row {i} {key} differs from one-by-one by {diff}")

    if labels is not None:
        out = model(**batch, **labels)
        for k, v in labels.items():
            tensors[k] = v.contiguous()
        tensors["loss"] = out.loss.detach().float().reshape(1).contiguous()
    return tensors


def save_expected(tensors: dict[str, torch.Tensor], out: Path) -> None:
    save_file(tensors, str(out / "expected.safetensors"), metadata={"generator": "make_bert_fixtures.py"})


def real_positions(batch: dict[str, torch.Tensor], special_ids: set[int]) -> list[list[int]]:
    res = []
    for i in range(batch["input_ids"].shape[0]):
        ids = batch["input_ids"][i].tolist()
        m = batch["attention_mask"][i].tolist()
        res.append([j for j, (t, mm) in enumerate(zip(ids, m)) if mm == 1 and t not in special_ids])
    return res


def mlm_labels(batch, special_ids, seed) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.full_like(batch["input_ids"], -100)
    for i, pos in enumerate(real_positions(batch, special_ids)):
        pick = torch.randperm(len(pos), generator=gen)[:2].tolist()
        for p in sorted(pos[j] for j in pick):
            labels[i, p] = batch["input_ids"][i, p]
    return labels


def tokcls_labels(batch, special_ids, num_labels, seed) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.full_like(batch["input_ids"], -100)
    for i, pos in enumerate(real_positions(batch, special_ids)):
        for p in pos:
            labels[i, p] = int(torch.randint(0, num_labels, (1,), generator=gen))
    return labels


# ---------------------------------------------------------------------------------------------
# pipelines
# ---------------------------------------------------------------------------------------------


def run_cases(task: str, out: Path, cases: list[tuple]) -> list[dict]:
    pipe = pipeline(task, model=str(out), tokenizer=str(out), device="cpu")
    res = []
    for inputs, kwargs in cases:
        output = pipe(inputs, **kwargs)
        res.append({"inputs": inputs, "kwargs": kwargs, "output": to_json(output)})
    return res


def check_sorted_gaps(scores: list[float], what: str, min_gap: float = 1e-4) -> None:
    for a, b in zip(scores, scores[1:]):
        if a - b < min_gap:
            fail(f"{what}: near-tie in ranked scores {scores}")


def fill_mask_cases(out: Path) -> list[dict]:
    cases = [
        ("paris is the [MASK] of france.", {}),
        ("john [MASK] in london.", {"top_k": 3}),
        ("the [MASK] was very [MASK].", {"top_k": 2}),
        (["mary loves the [MASK].", "berlin is a [MASK] city."], {}),
    ]
    res = run_cases("fill-mask", out, cases)

    def walk(o):
        if isinstance(o, list) and o and isinstance(o[0], dict):
            check_sorted_gaps([c["score"] for c in o], "fill-mask")
        elif isinstance(o, list):
            for x in o:
                walk(x)

    for c in res:
        walk(c["output"])
    return res


def text_cls_cases(out: Path, multilabel: bool) -> list[dict]:
    if multilabel:
        cases = [
            ("the team won the football game.", {}),
            ("the president gave a speech about science and music.", {"top_k": None}),
        ]
    else:
        cases = [
            ("this movie was great!", {}),
            ("i hate this terrible film.", {"top_k": None}),
            ("the music was good but the story was boring.", {"top_k": 2}),
            ({"text": "the movie was bad.", "text_pair": "the music was good."}, {"top_k": None}),
        ]
    res = run_cases("text-classification", out, cases)
    for c in res:
        o = c["output"]
        if isinstance(o, list) and o and isinstance(o[0], dict):
            check_sorted_gaps([x["score"] for x in o], "text-classification")
    return res


TOKCLS_SENTENCES = [
    "john lives in paris and works for google.",
    "mary met peter in london, then went to berlin.",
    "the berliner met johnson in rome.",  # berlin ##er, john ##son
    "anna loves tokyo 😀 and madrid.",  # the emoji becomes [UNK]
]
STRATEGIES = ["none", "simple", "first", "average", "max"]


def tokcls_pipeline_cases(out: Path) -> list[dict]:
    cases = [(s, {"aggregation_strategy": st}) for st in STRATEGIES for s in TOKCLS_SENTENCES]
    return run_cases("token-classification", out, cases)


@torch.no_grad()
def tune_tokcls_bias(model, tok) -> list[float]:
    """Pick a classifier bias so the pipeline shows several entities of several types, some
    multi-token groups, some "O" tokens, and no near-ties in the per-token or per-word scores.
    Deterministic search over a seeded sequence of candidate biases."""
    encs = [tok(s, return_offsets_mapping=True) for s in TOKCLS_SENTENCES]
    # The tiny random encoder's final hidden states are strongly correlated across tokens, so one
    # label wins everywhere.  Centre each label's logit over the sentences' real tokens (bias -=
    # mean) so the per-token variation decides, then try small seeded perturbations.
    real = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits[0, 1:-1] for e in encs])
    base_bias = model.classifier.bias.detach().clone() - real.mean(0)
    spread = real.std(0).mean().item()
    for attempt in range(200):
        gen = torch.Generator().manual_seed(1000 + attempt)
        delta = torch.randn(len(TOKCLS_LABELS), generator=gen) * 0.5 * spread
        bias = base_bias + delta
        model.classifier.bias.copy_(bias)
        ok = True
        n_groups, types, multi, n_o, split_disagree = 0, set(), 0, 0, 0
        for s, e in zip(TOKCLS_SENTENCES, encs):
            ids = torch.tensor([e["input_ids"]])
            probs = model(input_ids=ids).logits[0].softmax(-1)
            # per-token near-ties (strategy none/simple/first/max)
            top2 = probs.topk(2, dim=-1).values
            if (top2[1:-1, 0] - top2[1:-1, 1]).min().item() < 1e-3:
                ok = False
                break
            labels = probs.argmax(-1).tolist()[1:-1]
            words = e.word_ids()[1:-1]
            # per-word averaged probabilities (strategy average)
            for w in set(words):
                idx = [j + 1 for j, ww in enumerate(words) if ww == w]
                avg = probs[idx].mean(0).topk(2).values
                if (avg[0] - avg[1]).item() < 1e-3:
                    ok = False
                # a split word whose pieces disagree makes first/average/max differ
                if len(idx) > 1 and len({labels[j - 1] for j in idx}) > 1:
                    split_disagree += 1
            prev = None
            for lab in labels:
                name = TOKCLS_LABELS[lab]
                if name == "O":
                    n_o += 1
                    prev = None
                    continue
                bi, typ = name.split("-")
                if prev == typ and bi == "I":
                    multi += 1
                else:
                    n_groups += 1
                types.add(typ)
                prev = typ
        if ok and n_groups >= 6 and len(types) == 3 and multi >= 2 and n_o >= 8 and split_disagree >= 2:
            print(f"tokcls bias: attempt {attempt}, {n_groups} groups, {multi} continuations, {n_o} O tokens, {split_disagree} split words with mixed labels")
            return bias.tolist()
    fail("could not find a classifier bias giving a varied token-classification output")


def feature_extraction_cases(out: Path) -> list[dict]:
    return run_cases("feature-extraction", out, [(["john lives in paris.", "the movie was great!"], {})])


@torch.no_grad()
def sentence_embeddings(model, tok, texts) -> dict:
    enc = tok(texts, padding=True, return_tensors="pt")
    h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    norm = torch.nn.functional.normalize(mean, p=2, dim=1)
    return {
        "texts": texts,
        "pooling_note": "mean = sum(last_hidden_state * mask) / sum(mask); mean_normalized = mean / ||mean||_2; cls = last_hidden_state[:, 0]",
        "mean": mean.tolist(),
        "mean_normalized": norm.tolist(),
        "cls": h[:, 0].tolist(),
    }


# ---------------------------------------------------------------------------------------------
# real-vocab tokenizer parity fixture
# ---------------------------------------------------------------------------------------------

PARITY_TEXTS = [
    "Hello, world!",
    "The Quick Brown Fox Jumps Over The Lazy Dog.",
    "café",
    "naïve résumé",
    "Ångström unit",
    "Crème Brûlée at the Café Müller",
    "中文字符",
    "日本語のテキスト",
    "한국어",
    "mixed English和中文text",
    "😀👍🏽",
    "I love it 😀!",
    "wait...!!!??",
    "--==**",
    "a" * 120,
    "Supercalifragilisticexpialidocious" * 3 + " short",
    "3.14159",
    "pi is 3.14159, e is 2.71828 and 1,000,000 is big",
    "iPhone McDonald's O'Neil",
    "tab\tseparated\tvalues",
    "line one\nline two\r\nline three",
    "control\x00char\x07s and \x1b escapes",
    "zero\u200bwidth and soft\u00adhyphen",
    "multiple     spaces   here",
    "   leading and trailing   ",
    "The capital is [MASK].",
    "first part [SEP] second part",
    "[CLS] not special in text [PAD]",
    "",
    " ",
    "don't won't can't",
    "e-mail@example.com and https://example.org/path?x=1",
    "C++ and C# are #1",
    "$100 or €90 or £80",
    "unaffable unbelievably tokenization",
    "hyphen-ated and under_scored",
    "Ünïcödé ÀÉÎÕÜ",
    "ﬁ ligature and ＦＵＬＬＷＩＤＴＨ",
    "Ελληνικά και Русский",
    "a\u0301 combining acute",
]
PAIRS = [
    ("Who was Jim Henson?", "Jim Henson was a puppeteer."),
    ("How old are you?", "I'm 6 years old."),
    ("café", "naïve"),
    ("中文", "English"),
    ("", "only the second"),
]
CASED_TEXTS = PARITY_TEXTS[:10]


def tokenizer_parity() -> dict:
    vocab = {t: i for i, t in enumerate(read_vocab(REAL_VOCAB))}

    def cases(lower: bool, texts) -> list[dict]:
        fast = BertTokenizerFast(vocab=vocab, do_lower_case=lower)
        slow = BertTokenizerLegacy(str(REAL_VOCAB), do_lower_case=lower)
        res = []
        for t in texts:
            e = fast(t, return_offsets_mapping=True, return_token_type_ids=True)
            s = slow(t, return_token_type_ids=True)
            if s["input_ids"] != e["input_ids"] or s["token_type_ids"] != e["token_type_ids"]:
                fail(f"slow/fast disagree (lower={lower}) on {t!r}:\n fast {e['input_ids']}\n slow {s['input_ids']}")
            res.append(
                {
                    "text": t,
                    "input_ids": e["input_ids"],
                    "token_type_ids": e["token_type_ids"],
                    "offsets": [list(o) for o in e["offset_mapping"]],
                    "tokens": fast.convert_ids_to_tokens(e["input_ids"]),
                }
            )
        return res

    fast = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    slow = BertTokenizerLegacy(str(REAL_VOCAB), do_lower_case=True)
    pairs = []
    for a, b in PAIRS:
        e = fast(a, b, return_token_type_ids=True)
        s = slow(a, b, return_token_type_ids=True)
        if s["input_ids"] != e["input_ids"] or s["token_type_ids"] != e["token_type_ids"]:
            fail(f"slow/fast disagree on pair {(a, b)!r}")
        pairs.append({"text": a, "text_pair": b, "input_ids": e["input_ids"], "token_type_ids": e["token_type_ids"]})

    return {
        "description": "BertTokenizer (transformers tokenizers backend) on the real bert-base-uncased vocab; "
        "every case cross-checked against the pure-Python BertTokenizerLegacy. offsets are character "
        "(Unicode code point) offsets into text, [0, 0] for special tokens.",
        "vocab": "crates/mf-tokenizers/assets/bert-base-uncased/vocab.txt",
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
        "uncased": cases(True, PARITY_TEXTS),
        "pairs": pairs,
        "cased": cases(False, CASED_TEXTS),
    }


# ---------------------------------------------------------------------------------------------
# hub-style tokenizer dir
# ---------------------------------------------------------------------------------------------

HUB_TEXTS = ["john lives in paris.", "Hello, World!", "the berliner met johnson 😀", ""]


def hub_tokenizer(vocab: list[str], out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tok = make_tokenizer(vocab)
    backend = tok.backend_tokenizer
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    backend.enable_padding(length=128, pad_id=0, pad_token="[PAD]")
    backend.enable_truncation(max_length=128)
    tok.save_pretrained(out)
    saved = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    if not saved.get("padding") or saved["padding"]["strategy"] != {"Fixed": 128} or not saved.get("truncation"):
        # save_pretrained did not keep the backend's padding/truncation: write the backend directly.
        backend.save(str(out / "tokenizer.json"))
        saved = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    if saved["padding"]["strategy"] != {"Fixed": 128} or saved["truncation"]["max_length"] != 128:
        fail("hub tokenizer.json lost its fixed padding / truncation")
    if saved["post_processor"]["type"] != "TemplateProcessing":
        fail("hub tokenizer.json lost its TemplateProcessing post-processor")
    cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    if cfg.get("do_lower_case") is not True or cfg.get("model_max_length") != MODEL_MAX_LENGTH:
        fail(f"unexpected tokenizer_config.json {cfg}")

    auto = AutoTokenizer.from_pretrained(str(out))
    raw = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))

    def rec(enc) -> dict:
        return {k: list(enc[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}

    cases = [{"text": t, "kwargs": {}, "output": rec(auto(t))} for t in HUB_TEXTS]
    cases.append({"text": "where does john live?", "text_pair": "john lives in paris.", "kwargs": {}, "output": rec(auto("where does john live?", "john lives in paris."))})
    cases.append({"text": "john lives in paris.", "kwargs": {"padding": "max_length", "max_length": 16}, "output": rec(auto("john lives in paris.", padding="max_length", max_length=16))})
    for c in cases[:-1]:
        if len(c["output"]["input_ids"]) >= 128:
            fail("AutoTokenizer applied the tokenizer.json fixed padding")
    r = raw.encode("john lives in paris.")
    doc = {
        "description": "tokenizer.json has a TemplateProcessing post-processor (no explicit type ids on the "
        "single template) and Fixed(128) padding + truncation(128) baked in. 'cases' is what "
        "transformers.AutoTokenizer.from_pretrained(dir)(text, **kwargs) returns (it drops the baked-in padding); "
        "'raw_tokenizers' is what tokenizers.Tokenizer.from_file('tokenizer.json').encode(text) returns (padded to 128).",
        "versions": versions(),
        "tokenizer_class": type(auto).__name__,
        "cases": cases,
        "raw_tokenizers": {
            "text": "john lives in paris.",
            "input_ids": r.ids,
            "type_ids": r.type_ids,
            "attention_mask": r.attention_mask,
        },
    }
    write_json(out / "expected.json", doc)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def fresh_dir(name: str) -> Path:
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def bert_dir(name, kind, model, tok, vocab, rows, labels_fn, extra_json_fn=None, pre_save=None) -> None:
    out = fresh_dir(name)
    if pre_save is not None:
        pre_save(model)
    save_model(model, out)
    save_tokenizer(tok, vocab, out)
    batch, _ = encode_rows(tok, rows)
    labels = labels_fn(batch) if labels_fn else None
    tensors = forward_expected(model, kind, batch, labels)
    save_expected(tensors, out)
    doc = {
        "description": f"tiny random {type(model).__name__} (float32, CPU, eager). expected.safetensors holds the "
        "right-padded batch of 'texts' and each row alone; 'pipeline' cases are transformers.pipeline outputs on this dir.",
        "versions": versions(),
        "texts": [r if isinstance(r, str) else list(r) for r in rows],
        "loss_shape": [1] if labels is not None else None,
    }
    if extra_json_fn is not None:
        doc.update(extra_json_fn(out, model))
    write_json(out / "expected.json", doc)
    print(f"{name}: " + ", ".join(f"{k}{list(v.shape)}" for k, v in tensors.items()))


def main() -> None:
    global FIXTURES, SMALL_VOCAB
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-qa", action="store_true", help="do not run make_bert_qa_fixtures.py (transformers 4.x)")
    ap.add_argument("--out-root", default=str(FIXTURES), help="write under this directory instead of tests/fixtures (cargo xtask codegen --check)")
    args = ap.parse_args()
    FIXTURES = Path(args.out_root)
    SMALL_VOCAB = FIXTURES / "bert_tiny_vocab.txt"
    FIXTURES.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()

    vocab = build_small_vocab()
    SMALL_VOCAB.write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    V = len(vocab)
    print(f"small vocab: {V} tokens")
    tok = make_tokenizer(vocab)
    slow = BertTokenizerLegacy(str(SMALL_VOCAB), do_lower_case=True)
    special = {tok.pad_token_id, tok.cls_token_id, tok.sep_token_id}
    for w, pieces in (("johnson", ["john", "##son"]), ("berliner", ["berlin", "##er"])):
        if tok.tokenize(w) != pieces:
            fail(f"{w} tokenizes to {tok.tokenize(w)}")
    if tok.tokenize("😀") != ["[UNK]"]:
        fail("emoji should be [UNK]")

    # --- base ----------------------------------------------------------------------------
    rows = ["john lives in paris.", "mary works in the city of london.", "good movie."]
    check_slow_fast(tok, slow, rows)
    model = build(BertModel, bert_config(V))

    def base_extra(out, model):
        return {
            "pipeline": feature_extraction_cases(out),
            "sentence_embeddings": sentence_embeddings(model, tok, ["john lives in paris.", "the movie was great!", "mary works in london and berlin."]),
        }

    bert_dir("bert_tiny_base", "base", model, tok, vocab, rows, None, base_extra)

    # --- mlm -----------------------------------------------------------------------------
    rows = ["paris is the capital of france.", "john loves the movie.", "the film was great and the music was good."]
    check_slow_fast(tok, slow, rows)
    model = build(BertForMaskedLM, bert_config(V))
    if model.cls.predictions.decoder.weight.data_ptr() != model.bert.embeddings.word_embeddings.weight.data_ptr():
        fail("BertForMaskedLM decoder is not tied to the word embeddings")
    bert_dir(
        "bert_tiny_mlm",
        "mlm",
        model,
        tok,
        vocab,
        rows,
        lambda b: {"labels": mlm_labels(b, special, 11)},
        lambda out, m: {"pipeline": fill_mask_cases(out)},
    )

    # --- seqcls --------------------------------------------------------------------------
    rows = ["this movie was great!", "i hate this terrible film.", ("the movie was bad.", "the music was good.")]
    check_slow_fast(tok, slow, rows)
    cfg = bert_config(V, num_labels=3, id2label=dict(enumerate(SEQCLS_LABELS)), label2id={l: i for i, l in enumerate(SEQCLS_LABELS)})
    model = build(BertForSequenceClassification, cfg)
    bert_dir(
        "bert_tiny_seqcls",
        "seqcls",
        model,
        tok,
        vocab,
        rows,
        lambda b: {"labels": torch.tensor([2, 0, 1], dtype=torch.long)},
        lambda out, m: {"pipeline": text_cls_cases(out, multilabel=False)},
    )

    rows = ["the team won the football game.", "the president gave a speech.", ("science and music", "the players love football.")]
    check_slow_fast(tok, slow, rows)
    cfg = bert_config(
        V,
        num_labels=4,
        problem_type="multi_label_classification",
        id2label=dict(enumerate(MULTILABEL_LABELS)),
        label2id={l: i for i, l in enumerate(MULTILABEL_LABELS)},
    )
    model = build(BertForSequenceClassification, cfg)
    bert_dir(
        "bert_tiny_seqcls_multilabel",
        "seqcls",
        model,
        tok,
        vocab,
        rows,
        lambda b: {"labels": torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.float32)},
        lambda out, m: {"pipeline": text_cls_cases(out, multilabel=True)},
    )

    # --- tokcls --------------------------------------------------------------------------
    rows = ["john lives in paris.", "mary works for google in london.", "the berliner met johnson."]
    check_slow_fast(tok, slow, rows + TOKCLS_SENTENCES)
    cfg = bert_config(V, num_labels=len(TOKCLS_LABELS), id2label=dict(enumerate(TOKCLS_LABELS)), label2id={l: i for i, l in enumerate(TOKCLS_LABELS)})
    model = build(BertForTokenClassification, cfg)
    bias = tune_tokcls_bias(model, tok)
    bert_dir(
        "bert_tiny_tokcls",
        "tokcls",
        model,
        tok,
        vocab,
        rows,
        lambda b: {"labels": tokcls_labels(b, special, len(TOKCLS_LABELS), 12)},
        lambda out, m: {
            "classifier_bias_note": "classifier.bias was replaced (before saving) so that entities of all types appear",
            "classifier_bias": bias,
            "pipeline_sentences": TOKCLS_SENTENCES,
            "pipeline": tokcls_pipeline_cases(out),
        },
    )

    # --- qa ------------------------------------------------------------------------------
    rows = [
        ("where does john live?", "john lives in paris."),
        ("who works in london?", "mary works in london."),
        ("what is the capital of france?", "paris is the capital of france."),
    ]
    check_slow_fast(tok, slow, rows)
    model = build(BertForQuestionAnswering, bert_config(V))
    # answer spans (token positions in the padded batch): "paris", "mary", "paris"
    qa_batch, _ = encode_rows(tok, rows)

    def span_of(i, word):
        ids = qa_batch["input_ids"][i].tolist()
        tt = qa_batch["token_type_ids"][i].tolist()
        wid = tok.convert_tokens_to_ids(word)
        p = next(j for j, (t, y) in enumerate(zip(ids, tt)) if t == wid and y == 1)
        return p

    starts = [span_of(0, "paris"), span_of(1, "mary"), span_of(2, "paris")]
    ends = [starts[0] + 1, starts[1], starts[2]]  # "paris ." / "mary" / "paris"
    bert_dir(
        "bert_tiny_qa",
        "qa",
        model,
        tok,
        vocab,
        rows,
        lambda b: {"start_positions": torch.tensor(starts), "end_positions": torch.tensor(ends)},
        lambda out, m: {"pipeline": "filled in by make_bert_qa_fixtures.py (transformers 4.x)"},
    )

    # --- roberta / xlm-r -----------------------------------------------------------------
    rkw = roberta_kwargs(V)
    for name, cls, cfg_cls, kind, extra, labels_fn in (
        ("roberta_tiny_mlm", RobertaForMaskedLM, RobertaConfig, "mlm", {}, lambda b: {"labels": mlm_labels(b, {0, 1, 2}, 21)}),
        ("roberta_tiny_seqcls", RobertaForSequenceClassification, RobertaConfig, "seqcls", {"num_labels": 3}, lambda b: {"labels": torch.tensor([1, 2, 0])}),
        ("xlmr_tiny_tokcls", XLMRobertaForTokenClassification, XLMRobertaConfig, "tokcls", {"num_labels": 5}, lambda b: {"labels": tokcls_labels(b, {0, 1, 2}, 5, 22)}),
    ):
        out = fresh_dir(name)
        model = build(cls, cfg_cls(**rkw, **extra))
        save_model(model, out)
        batch, ids = roberta_rows(V, [12, 7, 4], seed=31)
        labels = labels_fn(batch)
        tensors = forward_expected(model, kind, batch, labels)
        save_expected(tensors, out)
        write_json(
            out / "expected.json",
            {
                "description": f"tiny random {cls.__name__}; inputs are random ids in [3, vocab) framed <s>=0 ... </s>=2, right-padded with 1. loss has shape [1].",
                "versions": versions(),
                "rows": ids,
            },
        )
        print(f"{name}: " + ", ".join(f"{k}{list(v.shape)}" for k, v in tensors.items()))

    # --- tokenizers ----------------------------------------------------------------------
    write_json(FIXTURES / "tokenizer_bert.json", tokenizer_parity())
    hub_tokenizer(vocab, FIXTURES / "bert_hub_tokenizer")

    # --- QA pipeline under transformers 4.x ----------------------------------------------
    if not args.skip_qa:
        script = Path(__file__).with_name("make_bert_qa_fixtures.py")
        if not (TF4_DIR / "transformers").is_dir():
            fail(f"{TF4_DIR} missing: .venv/bin/pip install --target .venv-tf4 transformers==4.57.1 'huggingface-hub<1.0' 'tokenizers>=0.22,<=0.23.0' --no-deps (or pass --skip-qa)")
        env = dict(os.environ, PYTHONPATH=str(TF4_DIR))
        subprocess.run([sys.executable, str(script), "--out-root", str(FIXTURES)], env=env, check=True)

    # --- report --------------------------------------------------------------------------
    total = 0
    names = ["bert_tiny_vocab.txt", "tokenizer_bert.json", "bert_hub_tokenizer", "bert_tiny_base", "bert_tiny_mlm", "bert_tiny_seqcls", "bert_tiny_seqcls_multilabel", "bert_tiny_tokcls", "bert_tiny_qa", "roberta_tiny_mlm", "roberta_tiny_seqcls", "xlmr_tiny_tokcls"]
    for n in names:
        p = FIXTURES / n
        size = sum(f.stat().st_size for f in p.rglob("*")) if p.is_dir() else p.stat().st_size
        total += size
        print(f"{size:>9}  {p.relative_to(REPO_ROOT) if p.is_relative_to(REPO_ROOT) else p}")
    print(f"{total:>9}  total")
    if total > 3 * 1024 * 1024:
        fail("BERT fixtures exceed 3 MB")


if __name__ == "__main__":
    main()
