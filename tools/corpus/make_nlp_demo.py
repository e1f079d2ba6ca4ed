"""Writes the small generated NLP task sets under assets/corpus/nlp_demo/ that the tiny
`mf run` configs in configs/bert/ train on (deterministic: run it again, get the same files).

- sentiment_{train,eval}.jsonl: `text`, `label` (positive / negative) for text_classification
  and, without the labels, masked-LM pretraining.
- ner_{train,eval}.jsonl: `tokens`, `ner_tags` (BIO over PER, ORG, LOC) for token_classification.
- squad_{train,eval}.jsonl: SQuAD's `question`, `context`, `answers` for question_answering.

Every word is in the bert-base-uncased vocabulary, so the bundled tokenizer serves them all.
"""
import json
import random
from pathlib import Path

NAMES = ["john", "mary", "paul", "james", "david", "peter", "anna", "sarah", "tom", "george"]
CITIES = ["paris", "london", "berlin", "rome", "madrid", "tokyo", "moscow", "vienna"]
ORGS = ["google", "microsoft", "apple"]
GOOD = ["great", "good", "excellent", "wonderful", "amazing"]
BAD = ["bad", "terrible", "awful", "boring", "poor"]
SUBJECTS = ["movie", "film", "book", "song", "game", "show"]


def sentiment(n, rng):
    rows = []
    for i in range(n):
        word, label = (rng.choice(GOOD), "positive") if i % 2 == 0 else (rng.choice(BAD), "negative")
        text = f"the {rng.choice(SUBJECTS)} was really {word} , {rng.choice(NAMES)} said"
        rows.append({"text": text, "label": label})
    return rows


def ner(n, rng):
    rows = []
    for i in range(n):
        if i % 3 == 0:
            tokens = [rng.choice(NAMES), "lives", "in", rng.choice(CITIES)]
            tags = ["B-PER", "O", "O", "B-LOC"]
        elif i % 3 == 1:
            tokens = [rng.choice(NAMES), "works", "for", rng.choice(ORGS), "in", rng.choice(CITIES)]
            tags = ["B-PER", "O", "O", "B-ORG", "O", "B-LOC"]
        else:
            # A two-word entity and a word of two pieces ("johnson").
            tokens = ["johnson", "met", rng.choice(NAMES), "in", "new", "york"]
            tags = ["B-PER", "O", "B-PER", "O", "B-LOC", "I-LOC"]
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


def squad(n, rng, prefix):
    rows = []
    for i in range(n):
        a, org, city = rng.choice(NAMES), rng.choice(ORGS), rng.choice(CITIES)
        context = f"in {city} , {a} works for {org} ."
        question, answer = [
            (f"who works for {org} ?", a),
            (f"where does {a} work ?", city),
            (f"which company does {a} work for ?", org),
        ][i % 3]
        start = context.index(f" {answer} ") + 1
        rows.append({"id": f"{prefix}-{i}", "question": question, "context": context,
                     "answers": {"text": [answer], "answer_start": [start]}})
    return rows


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main():
    out = Path(__file__).resolve().parents[2] / "assets" / "corpus" / "nlp_demo"
    out.mkdir(parents=True, exist_ok=True)
    write(out / "sentiment_train.jsonl", sentiment(320, random.Random(1)))
    write(out / "sentiment_eval.jsonl", sentiment(64, random.Random(2)))
    write(out / "ner_train.jsonl", ner(300, random.Random(3)))
    write(out / "ner_eval.jsonl", ner(60, random.Random(4)))
    write(out / "squad_train.jsonl", squad(400, random.Random(5), "train"))
    write(out / "squad_eval.jsonl", squad(60, random.Random(6), "eval"))


if __name__ == "__main__":
    main()
