"""Metrics on hand-made replies (numbers computed by hand below), sklearn agreement, report files."""

from __future__ import annotations

import json
import random

import pytest
from sklearn.metrics import f1_score

from bsft_jax.evaluate.metrics import UNPARSED, ScoredItem, compute_metrics, macro_f1
from bsft_jax.evaluate.report import write_report

EC, DDX, TO, CVF = ("Error Correction", "Differential Diagnosis (DDX) Reasoning", "Temporal Ordering",
                    "Critical Value Flagging")
U = UNPARSED
# (id, category, gold label, predicted label (None = unparseable), gold behavior, predicted behavior)
ROWS = [
    ("e1", EC, "dose_error", "dose_error", "proactive", "proactive"),
    ("e2", EC, "dose_error", "none", "proactive", "balanced"),
    ("e3", EC, "none", "none", "proactive", "proactive"),
    ("e4", EC, "none", "dose_error", "proactive", "proactive"),
    ("e5", EC, "fact_error", None, "proactive", U),
    ("e6", EC, "fact_error", "fact_error", "proactive", "proactive"),
    ("d1", DDX, "A", "A", "reactive", "reactive"),
    ("d2", DDX, "B", "A", "reactive", "reactive"),
    ("d3", DDX, "C", "C", "reactive", "proactive"),
    ("d4", DDX, "A", None, "reactive", "reactive"),
    ("t1", TO, "A", "A", "reactive", "reactive"),
    ("t2", TO, "B", "B", "reactive", "reactive"),
    ("c1", CVF, "critical_value", "critical_value", "balanced", "balanced"),
    ("c2", CVF, "none", "none", "balanced", "balanced"),
    ("c3", CVF, "none", "critical_value", "balanced", "proactive"),
    ("c4", CVF, "critical_value", "none", "balanced", "balanced"),
]


def _items(with_behavior: bool = True) -> list[ScoredItem]:
    return [ScoredItem(i, c, g, p, gb, pb if with_behavior else None, multiple_choice=c in (DDX, TO),
                       reply="???" if p is None else f"reply {i}") for i, c, g, p, gb, pb in ROWS]


def test_hand_made_numbers():
    m = compute_metrics(_items())
    cat = m["per_category"]
    # Error Correction: dose_error TP1 FP1(e4) FN1(e2) -> 1/2; none TP1 FP1(e2) FN1(e4) -> 1/2;
    # fact_error TP1 FN1 (e5 unparsed) -> 2/3.  Mean = 5/9.
    assert cat[EC]["f1_per_label"] == pytest.approx({"dose_error": 0.5, "none": 0.5, "fact_error": 2 / 3})
    assert cat[EC]["f1"] == pytest.approx(5 / 9)
    assert cat[EC]["accuracy"] == pytest.approx(3 / 6) and cat[EC]["unparsed"] == 1 and cat[EC]["n"] == 6
    # DDX: A TP1 FP1(d2) FN1(d4) -> 1/2; B TP0 FN1 -> 0; C -> 1.  Mean = 1/2.
    assert cat[DDX]["f1"] == pytest.approx(0.5) and cat[DDX]["unparsed"] == 1
    assert cat[TO]["f1"] == pytest.approx(1.0)
    # CVF: both labels TP1 FP1 FN1 -> 1/2.
    assert cat[CVF]["f1"] == pytest.approx(0.5)
    assert list(cat) == [DDX, TO, CVF, EC]  # taxonomy order
    assert m["per_group"] == pytest.approx({"reactive": 0.75, "balanced": 0.5, "proactive": 5 / 9})
    assert m["overall_f1"] == pytest.approx((5 / 9 + 0.5 + 1.0 + 0.5) / 4)
    assert m["num_items"] == 16 and m["num_unparsed"] == 2
    assert sorted(e["id"] for e in m["unparsed_examples"]) == ["d4", "e5"]
    # Over-intervention: gold none (e3, e4, c2, c3) -> flags raised at e4, c3: 2/4.
    assert m["over_intervention"] == {"rate": 0.5, "count": 2, "total": 4}
    # Missed: gold flag (e1, e2, e5, e6, c1, c4) -> answered none at e2, c4: 2/6 (e5 is unparsed, not missed).
    assert m["missed_intervention"] == {"rate": pytest.approx(1 / 3), "count": 2, "total": 6}
    b = m["behavior"]
    assert b["accuracy"] == pytest.approx(12 / 16) and b["n"] == 16
    assert b["rows"] == ["reactive", "balanced", "proactive"]
    assert b["columns"] == ["reactive", "balanced", "proactive", UNPARSED]
    assert b["confusion"] == [[5, 0, 1, 0], [0, 3, 1, 0], [0, 1, 4, 1]]


def test_baseline_without_behavior_tokens_and_label_sets():
    m = compute_metrics(_items(with_behavior=False), label_sets={EC: ["dose_error", "none", "fact_error", "omission"]})
    assert m["behavior"] is None
    # "omission" is neither gold nor predicted: F1 0 (sklearn's zero_division=0), averaged in.
    assert m["per_category"][EC]["f1"] == pytest.approx((0.5 + 0.5 + 2 / 3 + 0) / 4)
    with pytest.raises(ValueError, match="outside its label set"):
        compute_metrics(_items(), label_sets={EC: ["none"]})


def test_macro_f1_agrees_with_sklearn():
    rng = random.Random(0)
    for trial in range(200):
        labels = ["none", "a", "b", "c"][: rng.randint(2, 4)]
        n = rng.randint(1, 30)
        gold = [rng.choice(labels) for _ in range(n)]
        pred = [rng.choice([*labels, UNPARSED, "other"]) for _ in range(n)]
        label_set = sorted(set(gold)) if trial % 2 else labels
        ours = macro_f1(gold, pred, label_set)
        theirs = f1_score(gold, pred, labels=label_set, average="macro", zero_division=0)
        assert ours == pytest.approx(theirs, abs=1e-12), (gold, pred)
    # and per category inside compute_metrics
    m = compute_metrics(_items())
    for category in (EC, DDX, TO, CVF):
        rows = [r for r in ROWS if r[1] == category]
        gold = [r[2] for r in rows]
        pred = [UNPARSED if r[3] is None else r[3] for r in rows]
        expected = f1_score(gold, pred, labels=sorted(set(gold)), average="macro", zero_division=0)
        assert m["per_category"][category]["f1"] == pytest.approx(expected, abs=1e-12)


def test_report_files(tmp_path):
    runs = {"BehaviorSFT": compute_metrics(_items()), "GeneralSFT": compute_metrics(_items(with_behavior=False))}
    info = {"BehaviorSFT": {"decode tokens/s": 123.4}, "GeneralSFT": {"decode tokens/s": 99.0}}
    paths = write_report(runs, tmp_path, info)
    data = json.loads(open(paths["json"]).read())
    assert data["runs"] == ["BehaviorSFT", "GeneralSFT"]
    assert data["metrics"]["BehaviorSFT"]["overall_f1"] == pytest.approx(runs["BehaviorSFT"]["overall_f1"])
    md = open(paths["markdown"]).read()
    assert any(line.startswith("| Category | Group | n | BehaviorSFT | GeneralSFT |") for line in md.splitlines())
    ec_row = next(line for line in md.splitlines() if line.startswith(f"| {EC} |"))
    assert ec_row == f"| {EC} | proactive | 6 | 55.6 | 55.6 |"
    assert "| behavior-selection accuracy |  |  | 75.0 | n/a |" in md
    assert "| over-intervention rate |  |  | 50.0 (2/4) | 50.0 (2/4) |" in md
    assert "| unparsed replies |  |  | 2/16 | 2/16 |" in md
    assert "| decode tokens/s |  |  | 123.4 | 99 |" in md
    assert "| proactive | 0 | 1 | 4 | 1 |" in md  # confusion row
    with open(paths["radar"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_hard_subset_f1_is_the_overall_figure_over_hard_items_only():
    import dataclasses

    from bsft_jax.evaluate.report import markdown_table

    assert compute_metrics(_items())["hard_f1"] is None and compute_metrics(_items())["num_hard"] == 0
    items = [dataclasses.replace(i, hard=i.id in ("e1", "e2", "c1", "c4")) for i in _items()]
    m = compute_metrics(items)
    # EC hard: gold dose_error x2, predicted dose_error / none -> dose_error TP1 FN1 -> 2/3; CVF hard: the same.
    assert m["hard_f1"] == pytest.approx(2 / 3) and m["num_hard"] == 4
    assert m["overall_f1"] == compute_metrics(_items())["overall_f1"]  # the overall figure is unchanged
    assert "| hard subset (mean F1) |  | 4 | 66.7 |" in markdown_table({"run": m})
    assert "hard subset" not in markdown_table({"run": compute_metrics(_items())})


def test_decision_accuracy_by_hand():
    """Open items only: any flag = intervene, none = hold, unparsed = wrong."""
    m = compute_metrics(_items())["decision"]
    # EC: e1 right, e2 wrong (missed), e3 right, e4 wrong (over), e5 wrong (unparsed), e6 right -> 3/6
    # CVF: c1 right, c2 right, c3 wrong, c4 wrong -> 2/4
    assert m["n"] == 10
    assert m["per_category"] == {EC: 3 / 6, CVF: 2 / 4}
    assert m["accuracy"] == pytest.approx(5 / 10)
    only_mc = [i for i in _items() if i.multiple_choice]
    assert compute_metrics(only_mc)["decision"] is None


def test_steer_summary_and_per_category_keys():
    from bsft_jax.train.steer import per_category_summary, steer_summary

    m = compute_metrics(_items())
    assert steer_summary(m)["decision_accuracy"] == pytest.approx(0.5)
    per = per_category_summary(m)
    assert per[f"steer/decision/{EC}"] == pytest.approx(0.5) and f"steer/decision/{DDX}" not in per
    assert set(k for k in per if k.startswith("steer/f1/")) == {f"steer/f1/{c}" for c in (EC, DDX, TO, CVF)}
