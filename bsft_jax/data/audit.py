"""Audit of the demo set: can surface words decide the label, do test scenes copy train scenes?

    python -m bsft_jax.data.audit            # prints the numbers quoted in the README (~1 min)

What it measures (scene text only, never the reply):
- the surface probe: TF-IDF word 1-3-grams + logistic regression, trained on the train split and
  scored on the test split (and, for comparison, on a random 80/20 split of train, where the
  held-out combinations are not held out), macro-F1 of intervene-vs-hold per flag category, per group, and on
  the whole label space (all 13 categories, as the evaluator scores them);
- copies: test scenes equal to a train scene once person names are replaced, and "near copies"
  once numbers are replaced too;
- label balance per category, and H(behavior token | category) under the item scheme;
- the probe's intervene-vs-hold accuracy on the ``hard`` flag items against the rest.

Needs scikit-learn (a test dependency).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from bsft_jax.behavior import taxonomy
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


def _probe(train_x: list[str], train_y: list[str], test_x: list[str]) -> list[str]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 3), token_pattern=TOKEN_PATTERN, lowercase=True, sublinear_tf=False)
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


def probe_scores(train: Sequence[Record], test: Sequence[Record], *, full_label: bool = True) -> dict[str, float]:
    """Surface-probe macro-F1 (percent): intervene-vs-hold per flag category, per group, and overall.

    Per category, a probe is fit on that category's train scenes. ``balanced`` / ``proactive`` pool
    the intervene-vs-hold predictions of their categories; ``overall`` is macro-F1 of the full
    label (option letter or flag class) averaged over all 13 categories, as the evaluator reports
    (only when ``full_label``).
    """
    out: dict[str, float] = {}
    pooled: dict[str, tuple[list[str], list[str]]] = {g: ([], []) for g in taxonomy.GROUPS}
    full = []
    for category in taxonomy.CATEGORY_NAMES:
        tr = [r for r in train if r.category == category]
        te = [r for r in test if r.category == category]
        if not tr or not te:
            continue
        if full_label:
            pred = _probe([scene_text(r) for r in tr], [r.label for r in tr], [scene_text(r) for r in te])
            full.append(macro_f1([r.label for r in te], pred))
        if te[0].is_multiple_choice:
            continue
        gold_b = [intervenes(r) for r in te]
        pred_b = _probe([scene_text(r) for r in tr], [intervenes(r) for r in tr], [scene_text(r) for r in te])
        out[category] = macro_f1(gold_b, pred_b)
        g = taxonomy.group_of(category)
        pooled[g][0].extend(gold_b)
        pooled[g][1].extend(pred_b)
    for g, (gold, pred) in pooled.items():
        if gold:
            out[g] = macro_f1(gold, pred)
    if full:
        out["overall"] = sum(full) / len(full)
    return out


def hard_vs_rest(train: Sequence[Record], test: Sequence[Record]) -> dict[str, float]:
    """Probe accuracy (percent) of intervene-vs-hold on the flag categories' hard test items and the rest."""
    right: dict[bool, list[bool]] = {True: [], False: []}
    for category in taxonomy.CATEGORY_NAMES:
        tr = [r for r in train if r.category == category and not r.is_multiple_choice]
        te = [r for r in test if r.category == category and not r.is_multiple_choice]
        if not tr or not te:
            continue
        pred = _probe([scene_text(r) for r in tr], [intervenes(r) for r in tr], [scene_text(r) for r in te])
        for r, p in zip(te, pred):
            right[r.hard].append(p == intervenes(r))
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


def main() -> None:
    """Prints the audit of the default demo set (item scheme)."""
    from bsft_jax.behavior import BehaviorSpec
    from bsft_jax.data.demo import DemoConfig, generate_demo, label_counts

    splits = generate_demo(DemoConfig(), spec=BehaviorSpec.item_scheme())
    train, test = splits["train"], splits["test"]
    scores = probe_scores(train, test)
    print("surface probe (TF-IDF word 1-3-grams + logistic regression, scene text only), test macro-F1:")
    for key in [*[c for c in taxonomy.CATEGORY_NAMES if c in scores], "balanced", "proactive", "overall"]:
        print(f"  {key:48s} {scores[key]:5.1f}")
    seen = probe_scores(train[:4160], train[4160:], full_label=False)
    print("the same probe on a random split of train (combinations seen in training), macro-F1:")
    for key in [*[c for c in taxonomy.CATEGORY_NAMES if c in seen], "balanced", "proactive"]:
        print(f"  {key:48s} {seen[key]:5.1f}")
    hr = hard_vs_rest(train, test)
    print(f"probe intervene-vs-hold accuracy: hard {hr.get('hard', float('nan')):.1f}  "
          f"rest {hr.get('rest', float('nan')):.1f}")
    rates = copy_rates(train, test)
    print(f"test scenes equal to a train scene (names replaced): {100 * rates['exact']:.1f}%")
    print(f"near copies (names and numbers replaced): {100 * rates['near']:.1f}%")
    print("label balance (test) and H(token | category) in bits:")
    ent = token_entropy_by_category(test)
    for c, labels in label_counts(test).items():
        print(f"  {c:48s} H={ent[c]:.2f}  " + "  ".join(f"{k}={v}" for k, v in sorted(labels.items())))


if __name__ == "__main__":
    main()
