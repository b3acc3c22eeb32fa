"""Audit of the demo set: can surface words decide the label, do test scenes copy train scenes?

    python -m bsft_jax.data.audit                              # prints the numbers quoted in docs/data.md
    python -m bsft_jax.data.audit --json bench/demo_audit.json # ... and writes them as JSON

About 1-3 minutes on 2 CPU cores (the probes are fit 53 times). The probe, copy, balance and
hard-subset figures of docs/data.md are read from ``bench/demo_audit.json``; ``tests/data/test_demo_audit.py`` checks
that the file matches docs/data.md and what this module computes from the current demo data.

What it measures (scene text only, never the reply):
- the surface probe: TF-IDF word 1-3-grams + logistic regression, trained on the train split and
  scored on the test split (and, for comparison, on a random 80/20 split of train, where the
  held-out combinations are not held out), macro-F1 of intervene-vs-hold per flag category, per group, and on
  the whole label space (all 13 categories, as the evaluator scores them); also the macro-F1 of the
  flipped predictions (intervene <-> hold), since a probe far below chance reads the label too;
- the character probe: the same on TF-IDF character 2-5-grams inside words (sublinear tf), which
  sees a word stem wherever it occurs ("platelet" in "platelet count" and "platelets 240");
- copies: test scenes equal to a train scene once person names are replaced, and "near copies"
  once numbers are replaced too;
- label balance per category, and H(behavior token | category) under the item scheme;
- the probe's intervene-vs-hold accuracy on the ``hard`` flag items against the rest.

Needs scikit-learn (a test dependency).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from bsft_jax.behavior import taxonomy
from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.data.demo import DEMO_VERSION, DemoConfig, generate_demo, label_counts
from bsft_jax.data.format import scene_text
from bsft_jax.data.schema import Record

_NAME_RE = re.compile(r"\b(?:Dr\.|Nurse|Pharmacist|Mr\.|Ms\.) [A-Z][a-z]+\b")
_NUM_RE = re.compile(r"\d+(?:\.\d+)?")
# Keeps numbers ("6.6", "4") as tokens; sklearn's default pattern drops one-character tokens.
TOKEN_PATTERN = r"[A-Za-z]+|\d+(?:\.\d+)?"


def normalized_scene(record: Record, *, numbers: bool = False) -> str:
    """Scene text with person names replaced (and numbers too when ``numbers``)."""
    text = _NAME_RE.sub("<NAME>", scene_text(record))
    return _NUM_RE.sub("<N>", text) if numbers else text


def copy_rates(train: Sequence[Record], test: Sequence[Record]) -> dict[str, float]:
    """Fraction of test scenes equal to some train scene: names replaced; names and numbers replaced."""
    exact = {normalized_scene(r) for r in train}
    near = {normalized_scene(r, numbers=True) for r in train}
    n = max(len(test), 1)
    return {"exact": sum(normalized_scene(r) in exact for r in test) / n,
            "near": sum(normalized_scene(r, numbers=True) in near for r in test) / n}


def intervenes(record: Record) -> str:
    """'intervene' / 'hold' for a flag record (the binary decision the probe is scored on)."""
    return "intervene" if record.intervenes else "hold"


# The surface probes' TF-IDF features (the classifier is the same): word 1-3-grams, and character
# 2-5-grams inside words (demo 2.1's Missing Information cue, "platelet", was a stem the words split).
PROBES: dict[str, dict] = {
    "word": {"ngram_range": (1, 3), "token_pattern": TOKEN_PATTERN, "lowercase": True, "sublinear_tf": False},
    "char": {"analyzer": "char_wb", "ngram_range": (2, 5), "lowercase": True, "sublinear_tf": True},
}


def _probe(train_x: list[str], train_y: list[str], test_x: list[str], probe: str = "word") -> list[str]:
    # scikit-learn is the optional extra 'audit': only this probe needs it
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(**PROBES[probe])
    xs = vec.fit_transform(train_x)
    if len(set(train_y)) < 2:
        return [train_y[0]] * len(test_x)
    clf = LogisticRegression(C=10.0, max_iter=1000, solver="liblinear" if len(set(train_y)) == 2 else "lbfgs")
    clf.fit(xs, train_y)
    return list(clf.predict(vec.transform(test_x)))


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Macro-F1 in percent over the gold labels' classes."""
    scores = []
    for c in sorted(set(gold)):
        tp = sum(g == c and p == c for g, p in zip(gold, pred))
        fp = sum(g != c and p == c for g, p in zip(gold, pred))
        fn = sum(g == c and p != c for g, p in zip(gold, pred))
        scores.append(0.0 if tp == 0 else 200.0 * tp / (2 * tp + fp + fn))
    return sum(scores) / max(len(scores), 1)


def binary_predictions(train: Sequence[Record], test: Sequence[Record], probe: str = "word"
                       ) -> dict[str, tuple[list[str], list[str]]]:
    """Per flag category: (gold, probe prediction) of intervene-vs-hold on ``test``, the probe fit on ``train``.

    ``probe`` names the features (:data:`PROBES`).
    """
    out = {}
    for category in taxonomy.CATEGORY_NAMES:
        tr = [r for r in train if r.category == category and not r.is_multiple_choice]
        te = [r for r in test if r.category == category and not r.is_multiple_choice]
        if tr and te:
            pred = _probe([scene_text(r) for r in tr], [intervenes(r) for r in tr], [scene_text(r) for r in te],
                          probe)
            out[category] = ([intervenes(r) for r in te], pred)
    return out


def flipped(pred: Sequence[str]) -> list[str]:
    """Intervene-vs-hold predictions turned around (a probe far below chance, flipped, reads the label)."""
    return ["hold" if p == "intervene" else "intervene" for p in pred]


def pooled_scores(preds: Mapping[str, tuple[Sequence[str], Sequence[str]]], *, flip: bool = False
                  ) -> dict[str, float]:
    """Macro-F1 per category of :func:`binary_predictions`, and pooled per group (``flip``: flipped)."""
    out: dict[str, float] = {}
    pooled: dict[str, tuple[list[str], list[str]]] = {g: ([], []) for g in taxonomy.GROUPS}
    for category, (gold, pred) in preds.items():
        pred = flipped(pred) if flip else list(pred)
        out[category] = macro_f1(gold, pred)
        pooled[taxonomy.group_of(category)][0].extend(gold)
        pooled[taxonomy.group_of(category)][1].extend(pred)
    for g, (gold, pred) in pooled.items():
        if gold:
            out[g] = macro_f1(gold, pred)
    return out


def full_label_score(train: Sequence[Record], test: Sequence[Record], probe: str = "word") -> float:
    """The probe on the full label (option letter or flag class): macro-F1 averaged over the categories."""
    full = []
    for category in taxonomy.CATEGORY_NAMES:
        tr = [r for r in train if r.category == category]
        te = [r for r in test if r.category == category]
        if tr and te:
            pred = _probe([scene_text(r) for r in tr], [r.label for r in tr], [scene_text(r) for r in te], probe)
            full.append(macro_f1([r.label for r in te], pred))
    return sum(full) / max(len(full), 1)


def probe_scores(train: Sequence[Record], test: Sequence[Record], *, full_label: bool = True,
                 flip: bool = False, probe: str = "word") -> dict[str, float]:
    """Surface-probe macro-F1 (percent): intervene-vs-hold per flag category, per group, and overall.

    Per category, a probe is fit on that category's train scenes. ``balanced`` / ``proactive`` pool
    the intervene-vs-hold predictions of their categories; ``overall`` is macro-F1 of the full
    label (option letter or flag class) averaged over all 13 categories, as the evaluator reports
    (only when ``full_label``). With ``flip``, the intervene-vs-hold scores are of the flipped
    predictions (:func:`flipped`). ``probe`` names the features (:data:`PROBES`).
    """
    out = pooled_scores(binary_predictions(train, test, probe), flip=flip)
    if full_label:
        out["overall"] = full_label_score(train, test, probe)
    return out


def hard_vs_rest(test: Sequence[Record], preds: Mapping[str, tuple[Sequence[str], Sequence[str]]]
                 ) -> dict[str, float]:
    """Probe accuracy (percent) of intervene-vs-hold on the flag categories' hard test items and the rest.

    ``preds`` are :func:`binary_predictions` on ``test`` (its records in order, per category).
    """
    right: dict[bool, list[bool]] = {True: [], False: []}
    for category, (gold, pred) in preds.items():
        te = [r for r in test if r.category == category]
        for r, g, p in zip(te, gold, pred):
            right[r.hard].append(p == g)
    return {("hard" if k else "rest"): 100.0 * sum(v) / max(len(v), 1) for k, v in right.items()}


def entropy_bits(values: Iterable[str]) -> float:
    """Shannon entropy (bits) of the empirical distribution of ``values``."""
    counts = Counter(values)
    n = sum(counts.values())
    return abs(sum(c / n * math.log2(c / n) for c in counts.values())) if n else 0.0


def token_entropy_by_category(records: Sequence[Record]) -> Mapping[str, float]:
    """H(behavior | category) in bits, per category."""
    by: dict[str, list[str]] = {}
    for r in records:
        by.setdefault(r.category, []).append(r.behavior)
    return {c: entropy_bits(v) for c, v in by.items()}


def hard_counts(records: Sequence[Record]) -> dict[str, int]:
    """Hard items per category (flag categories with none included, as 0)."""
    counts = Counter(r.category for r in records if r.hard)
    return {c: counts[c] for c in taxonomy.CATEGORY_NAMES if c in {r.category for r in records}}


def _r1(x: float) -> float:
    return round(x, 1)


def audit_numbers(splits: Mapping[str, Sequence[Record]]) -> dict:
    """Every number the audit reports, rounded as printed (percent to 0.1, bits to 0.01), JSON-ready."""
    train, test = splits["train"], splits["test"]
    n_seen = len(train) * 4 // 5
    rates = copy_rates(train, test)
    entropy = token_entropy_by_category(test)
    preds = binary_predictions(train, test)
    char = binary_predictions(train, test, "char")
    return {
        "demo_version": DEMO_VERSION,
        "command": "python -m bsft_jax.data.audit --json bench/demo_audit.json",
        "probe_test": {**{k: _r1(v) for k, v in pooled_scores(preds).items()},
                       "overall": _r1(full_label_score(train, test))},
        "probe_test_flipped": {k: _r1(v) for k, v in pooled_scores(preds, flip=True).items()},
        "char_probe_test": {**{k: _r1(v) for k, v in pooled_scores(char).items()},
                            "overall": _r1(full_label_score(train, test, "char"))},
        "char_probe_test_flipped": {k: _r1(v) for k, v in pooled_scores(char, flip=True).items()},
        "probe_random_split_of_train": {k: _r1(v) for k, v in
                                        probe_scores(train[:n_seen], train[n_seen:], full_label=False).items()},
        "probe_accuracy_hard_vs_rest": {k: _r1(v) for k, v in hard_vs_rest(test, preds).items()},
        "copies_percent": {k: _r1(100 * v) for k, v in rates.items()},
        "test_label_counts": {c: dict(sorted(v.items())) for c, v in label_counts(test).items()},
        "test_token_entropy_bits": {c: round(entropy[c], 2) for c in entropy},
        "hard_items": {split: hard_counts(records) for split, records in splits.items()},
    }


def _print(numbers: Mapping) -> None:
    for name, prefix in (("word 1-3-grams", ""), ("character 2-5-grams inside words", "char_")):
        print(f"surface probe (TF-IDF {name} + logistic regression, scene text only), test macro-F1 "
              "(flipped predictions):")
        probe, flip = numbers[f"{prefix}probe_test"], numbers[f"{prefix}probe_test_flipped"]
        for key in [*[c for c in taxonomy.CATEGORY_NAMES if c in probe], "balanced", "proactive", "overall"]:
            print(f"  {key:48s} {probe[key]:5.1f}" + (f"  ({flip[key]:5.1f})" if key in flip else ""))
    seen = numbers["probe_random_split_of_train"]
    print("the word probe on a random split of train (combinations seen in training), macro-F1:")
    for key, value in seen.items():
        print(f"  {key:48s} {value:5.1f}")
    hr = numbers["probe_accuracy_hard_vs_rest"]
    print(f"probe intervene-vs-hold accuracy: hard {hr.get('hard', float('nan')):.1f}  "
          f"rest {hr.get('rest', float('nan')):.1f}")
    print(f"test scenes equal to a train scene (names replaced): {numbers['copies_percent']['exact']:.1f}%")
    print(f"near copies (names and numbers replaced): {numbers['copies_percent']['near']:.1f}%")
    print("label balance (test), H(token | category) in bits, hard items (train / validation / test):")
    for c, labels in numbers["test_label_counts"].items():
        hard = "/".join(str(numbers["hard_items"][s].get(c, 0)) for s in ("train", "validation", "test"))
        print(f"  {c:48s} H={numbers['test_token_entropy_bits'][c]:.2f}  hard {hard:11s} "
              + "  ".join(f"{k}={v}" for k, v in labels.items()))


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the audit of the default demo set (item scheme); ``--json PATH`` also writes it."""
    parser = argparse.ArgumentParser(prog="python -m bsft_jax.data.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        print(f"error: --json {args.json}: folder {os.path.dirname(os.path.abspath(args.json))} does not exist",
              file=sys.stderr)
        return 2
    numbers = audit_numbers(generate_demo(DemoConfig(), spec=BehaviorSpec.item_scheme()))
    _print(numbers)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(numbers, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
