"""bench.ablation at toy size: two seeds, both arms, summary, paired bootstrap, table rendering."""

from __future__ import annotations

import pytest

from bench.ablation import ARMS, ablation, apply_overrides, merge_record, paired_bootstrap
from bench.tables import render_ablation
from bsft_jax.checkpoint.read import read_meta
from bsft_jax.evaluate.metrics import ScoredItem
from bsft_jax.setup.config import ConfigError

from ..toy import toy_demo_config


def _items(preds: list[str], gold: list[str]) -> list[ScoredItem]:
    return [ScoredItem(id=str(i), category="Drug Interaction Alert", gold_label=g, pred_label=p)
            for i, (g, p) in enumerate(zip(gold, preds))]


def test_paired_bootstrap_sign_and_ci():
    gold = ["none", "flag"] * 10
    general = _items(["none"] * 20, gold)  # never flags: F1 of 'flag' is 0
    behavior = _items(gold, gold)  # perfect
    score = lambda items: {"overall": sum(i.gold_label == i.prediction for i in items) / len(items)}  # noqa: E731
    ci = paired_bootstrap([(general, behavior)], "overall", samples=200, score=score)
    assert ci["mean"] == pytest.approx(0.5) and 0.2 < ci["ci_low"] <= ci["mean"] <= ci["ci_high"] < 0.8
    same = paired_bootstrap([(general, general)], "overall", samples=50, score=score)
    assert same["ci_low"] == same["ci_high"] == 0.0
    with pytest.raises(ValueError, match="same test items"):
        paired_bootstrap([(general, behavior[:5])], "overall", samples=5)


def test_ablation_toy_two_seeds(tmp_path, monkeypatch, toy_cache):
    monkeypatch.setenv("BSFT_JAX_CACHE", toy_cache)
    cfgs = [toy_demo_config("", recipe, steps=2) for recipe in ("demo_scratch.py", "demo_scratch_generalsft.py")]
    for c in cfgs:
        apply_overrides(c, ["train.eval_every=-1", "train.steer_eval_items=0"])
    # the group scheme here (the item scheme is the recipes' own, run end to end in tests/test_mainjob.py)
    results = ablation(*cfgs, seeds=[0, 1], schemes=["group"], runs_dir=str(tmp_path), limit=13,
                       max_new_tokens=4, bootstrap=20)
    assert read_meta(str(tmp_path / "group_seed1_bsft"))["behavior"]["names"] == ["reactive", "balanced", "proactive"]
    # GeneralSFT keeps its recipe's scheme and one run per seed, shared by every scheme
    assert sorted(p.name for p in tmp_path.glob("*_gsft")) == ["seed0_gsft", "seed1_gsft"]
    for scheme in ("group",):
        r = results[scheme]
        assert r["test_items"] == 13 and r["wall_seconds"] > 0
        for arm in ARMS:
            assert r["macro_f1"][arm]["overall"]["n"] == 2 and len(r["per_seed"][arm]) == 2
            for rates in r["rates_per_seed"][arm]:
                assert 0.0 <= rates["over_intervention"] <= 1.0 and 0.0 <= rates["missed_intervention"] <= 1.0
        assert r["rates_per_seed"]["GeneralSFT"][0]["behavior_accuracy"] is None
        assert 0.0 <= r["rates_per_seed"]["BehaviorSFT"][0]["behavior_accuracy"] <= 1.0
        for metric in ("proactive", "overall"):
            ci = r["diff_ci"][metric]
            assert ci["ci_low"] <= ci["ci_high"] and ci["samples"] == 20
    record = {"config": {"schemes": ["group"], "seeds": [0, 1]}, "results": {**results, "wall_seconds": 60}}
    table = render_ablation([record])
    assert "| group | **BehaviorSFT - GeneralSFT** (95% CI) |" in table and "over seeds 0, 1" in table
    # the per-seed decision rates, e.g. "| group | GeneralSFT | 100 / 50 | 0 / 0 |  |"
    assert "missed-intervention % (seed 0 / 1)" in table
    assert sum(line.startswith("| group | BehaviorSFT | ") and line.count(" / ") == 3
               for line in table.splitlines()) == 1


def test_merge_record_adds_the_other_schemes_of_the_same_experiment():
    def rec(schemes, seeds=(0, 1), date="d1"):
        return {"machine": {"date": date}, "config": {"schemes": list(schemes), "seeds": list(seeds), "limit": 13,
                                                      "recipes": ["a", "b"], "overrides": []},
                "results": {**{s: {"test_items": 13, "wall_seconds": 10.0} for s in schemes}, "wall_seconds": 10.0}}

    merged = merge_record(rec(["item"], date="old"), rec(["group"], date="new"))
    assert merged["config"]["schemes"] == ["group", "item"]
    assert merged["results"]["item"]["machine"] == {"date": "old"} and "machine" not in merged["results"]["group"]
    assert merged["results"]["wall_seconds"] == 20.0 and merged["machine"] == {"date": "new"}
    # a rerun of a scheme replaces it; another experiment (other seeds) replaces the whole record
    assert merge_record(rec(["item"]), rec(["item"], date="new"))["config"]["schemes"] == ["item"]
    other = merge_record(rec(["item"]), rec(["group"], seeds=(0, 1, 2)))
    assert other["config"]["schemes"] == ["group"] and "item" not in other["results"]
    assert merge_record(None, rec(["group"]))["config"]["schemes"] == ["group"]


def test_apply_overrides_names_unknown_fields():
    c = toy_demo_config("x")
    apply_overrides(c, ["train.steps=3", "behavior.scheme=group"])
    assert c.train.steps == 3 and c.behavior.scheme == "group"
    with pytest.raises(ConfigError, match="train.stepz"):
        apply_overrides(c, ["train.stepz=3"])
