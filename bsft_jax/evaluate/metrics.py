"""BehaviorBench metrics: macro-F1 per category, per group and overall, behavior selection, and
intervention errors. Pure Python over scored items (no JAX), so every number can be checked by hand.

Definitions (they are what the report prints):

* **Per-category macro-F1**: for each label of the category's label set (by default the gold labels
  seen in that category), F1 = 2 TP / (2 TP + FP + FN); the category score is their unweighted mean.
  A prediction outside the label set (an unparseable reply, :data:`UNPARSED`, or a label of another
  task) is a false negative for the gold label and no label's false positive. This equals
  ``sklearn.metrics.f1_score(gold, pred, labels=label_set, average="macro", zero_division=0)``.
* **Group score**: unweighted mean of the category scores of the group's categories present;
  **overall**: unweighted mean over all categories present.
* **Hard subset**: the overall figure over the items marked ``hard`` only (per-category macro-F1 over
  the gold labels the category's hard items have, then the mean over categories with hard items);
  None when no item is hard.
* **Behavior-selection accuracy**: fraction of items whose predicted behavior token equals the gold
  one (a missing token counts as :data:`UNPARSED`), with a confusion matrix (rows gold, columns
  predicted). Not applicable (None) for runs without behavior tokens.
* **Over-intervention rate**: among non-multiple-choice items whose gold label is ``none``
  (restraint was right), the fraction where the reply raised a flag (any label other than ``none``
  and :data:`UNPARSED`). **Missed-intervention rate**: among non-multiple-choice items whose gold
  label is a flag, the fraction answered ``none``. Unparseable replies are in neither numerator;
  they are counted on their own.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bsft_jax.behavior import taxonomy
from bsft_jax.data.schema import NO_INTERVENTION as NONE_LABEL  # "none": restraint was right

UNPARSED = "<unparsed>"  # the prediction of a reply the parser could not read


@dataclasses.dataclass(frozen=True)
class ScoredItem:
    """One test item with its gold answer and what a run predicted.

    pred_label:     the parsed label, or None / :data:`UNPARSED` when the reply could not be parsed.
    gold_behavior:  the behavior the item calls for (None: not scored for behavior).
    pred_behavior:  the behavior token the reply started with; :data:`UNPARSED` when the run uses
                    behavior tokens but none was found; None when the run has none (baselines).
    multiple_choice: the label is an option key (excluded from the intervention rates).
    hard:           the item belongs to the hard subset (scored again on its own: ``hard_f1``).
    """

    id: str
    category: str
    gold_label: str
    pred_label: str | None
    gold_behavior: str | None = None
    pred_behavior: str | None = None
    multiple_choice: bool = False
    reply: str = ""
    hard: bool = False

    @property
    def prediction(self) -> str:
        """``pred_label`` with None mapped to :data:`UNPARSED`."""
        return UNPARSED if self.pred_label is None else self.pred_label


def f1_per_label(gold: Sequence[str], pred: Sequence[str], labels: Iterable[str]) -> dict[str, float]:
    """F1 = 2TP / (2TP + FP + FN) of each label (0 when the label is neither gold nor predicted)."""
    if len(gold) != len(pred):
        raise ValueError(f"f1_per_label: {len(gold)} gold labels but {len(pred)} predictions")
    out = {}
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred))
        fp = sum(g != label and p == label for g, p in zip(gold, pred))
        fn = sum(g == label and p != label for g, p in zip(gold, pred))
        out[label] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return out


def macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Unweighted mean of :func:`f1_per_label` over ``labels`` (default: the gold labels present)."""
    labels = sorted(set(gold)) if labels is None else list(labels)
    if not labels:
        raise ValueError("macro_f1: no labels to average over")
    per_label = f1_per_label(gold, pred, labels)
    return sum(per_label.values()) / len(per_label)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _rate(hits: int, total: int) -> dict[str, Any]:
    return {"rate": hits / total if total else None, "count": hits, "total": total}


def compute_metrics(
    items: Sequence[ScoredItem],
    *,
    label_sets: Mapping[str, Sequence[str]] | None = None,
    behaviors: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All BehaviorBench numbers for one run, as a JSON-ready dict (definitions in the module doc).

    label_sets: category -> labels to average F1 over (default: the gold labels seen per category).
    behaviors:  row/column order of the behavior confusion matrix (default: taxonomy groups, then
                any other gold behavior, then :data:`UNPARSED`).
    Returns keys ``num_items``, ``num_unparsed``, ``per_category`` (category -> ``group``, ``n``,
    ``f1``, ``accuracy``, ``unparsed``, ``labels``, ``f1_per_label``), ``per_group`` (group -> mean
    F1 or None), ``overall_f1``, ``behavior`` (``accuracy``, ``labels``, ``confusion``, ``n``; or None),
    ``over_intervention`` and ``missed_intervention`` (``rate``, ``count``, ``total``), ``decision``
    (:func:`decision_metrics`) and
    ``unparsed_examples`` (up to 5 ids with their replies).
    """
    if not items:
        raise ValueError("compute_metrics: no items to score")
    by_category: dict[str, list[ScoredItem]] = defaultdict(list)
    for item in items:
        by_category[item.category].append(item)

    per_category = {c: _category_metrics(c, by_category[c], label_sets) for c in taxonomy.in_order(by_category)}

    per_group = {
        group: _mean([m["f1"] for m in per_category.values() if m["group"] == group]) for group in taxonomy.GROUPS
    }
    overall = _mean([m["f1"] for m in per_category.values()])

    open_items = [i for i in items if not i.multiple_choice]
    restraint = [i for i in open_items if i.gold_label == NONE_LABEL]
    flagged = [i for i in open_items if i.gold_label != NONE_LABEL]
    over = sum(i.prediction not in (NONE_LABEL, UNPARSED) for i in restraint)
    missed = sum(i.prediction == NONE_LABEL for i in flagged)

    unparsed_items = [i for i in items if i.prediction == UNPARSED]
    hard: dict[str, list[ScoredItem]] = defaultdict(list)
    for item in items:
        if item.hard:
            hard[item.category].append(item)
    return {
        "num_items": len(items),
        "num_unparsed": len(unparsed_items),
        "per_category": per_category,
        "per_group": per_group,
        "overall_f1": overall,
        "hard_f1": _mean([_category_metrics(c, hard[c], None)["f1"] for c in hard]),
        "num_hard": sum(map(len, hard.values())),
        "behavior": behavior_metrics(items, behaviors),
        "over_intervention": _rate(over, len(restraint)),
        "missed_intervention": _rate(missed, len(flagged)),
        "decision": decision_metrics(open_items),
        "unparsed_examples": [{"id": i.id, "reply": i.reply[:200]} for i in unparsed_items[:5]],
    }


def decision_metrics(open_items: Sequence[ScoredItem]) -> dict[str, Any] | None:
    """Intervene-vs-hold accuracy on open (non-multiple-choice) items, overall and per category.

    The decision is read from the prediction alone: any flag label is "intervene", ``none`` is
    "hold", and an unparsed reply counts as wrong. Chance is 50% on the demo set (equal rates).
    """
    if not open_items:
        return None

    def right(i: ScoredItem) -> bool:
        if i.prediction == UNPARSED:
            return False
        return (i.prediction != NONE_LABEL) == (i.gold_label != NONE_LABEL)

    by_category: dict[str, list[bool]] = defaultdict(list)
    for item in open_items:
        by_category[item.category].append(right(item))
    hits = sum(sum(v) for v in by_category.values())
    return {"accuracy": hits / len(open_items), "n": len(open_items),
            "per_category": {c: sum(v) / len(v) for c, v in by_category.items()}}


def _category_metrics(category: str, items: Sequence[ScoredItem], label_sets: Mapping[str, Sequence[str]] | None
                      ) -> dict[str, Any]:
    """Macro-F1 (over the category's label set), accuracy and unparsed count of one category's items."""
    gold = [i.gold_label for i in items]
    pred = [i.prediction for i in items]
    labels = sorted(set(gold)) if not label_sets or category not in label_sets else list(label_sets[category])
    missing = sorted(set(gold) - set(labels))
    if missing:
        raise ValueError(f"compute_metrics: category {category!r} has gold labels {missing} outside its label "
                         f"set {labels}")
    per_label = f1_per_label(gold, pred, labels)
    return {
        "group": taxonomy.group_of(category) if category in taxonomy.CATEGORY_BY_NAME else None,
        "n": len(items),
        "f1": sum(per_label.values()) / len(per_label),
        "accuracy": sum(g == p for g, p in zip(gold, pred)) / len(gold),
        "unparsed": pred.count(UNPARSED),
        "labels": labels,
        "f1_per_label": per_label,
    }


def behavior_metrics(items: Sequence[ScoredItem], behaviors: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Behavior-selection accuracy and confusion matrix over items with both behaviors set (else None)."""
    scored = [i for i in items if i.gold_behavior is not None and i.pred_behavior is not None]
    if not scored:
        return None
    if behaviors is None:
        gold_names = {i.gold_behavior for i in scored}
        behaviors = [g for g in taxonomy.GROUPS if g in gold_names] + sorted(gold_names - set(taxonomy.GROUPS))
    rows = list(behaviors)
    columns = rows + sorted({i.pred_behavior for i in scored} - set(rows) - {UNPARSED}) + [UNPARSED]
    counts = Counter((i.gold_behavior, i.pred_behavior) for i in scored)
    unknown = sorted({i.gold_behavior for i in scored} - set(rows))
    if unknown:
        raise ValueError(f"behavior_metrics: gold behaviors {unknown} are not among {rows}")
    return {
        "accuracy": sum(i.gold_behavior == i.pred_behavior for i in scored) / len(scored),
        "n": len(scored),
        "rows": rows,
        "columns": columns,
        "confusion": [[counts[(g, p)] for p in columns] for g in rows],
    }
