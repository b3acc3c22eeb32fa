"""bench.ablation at toy size: two seeds, both arms, summary, paired bootstrap, README rendering."""

from __future__ import annotations

import pytest

from bench.ablation import ARMS, ablation, apply_overrides, paired_bootstrap
from bench.tables import render_ablation
from bsft_jax.evaluate.metrics import ScoredItem
from bsft_jax.run.checkpoint import read_meta
from bsft_jax.run.config import ConfigError

from .toy import toy_demo_config


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
    for scheme in ("group",):
        r = results[scheme]
        assert r["test_items"] == 13
        for arm in ARMS:
            assert r["macro_f1"][arm]["overall"]["n"] == 2 and len(r["per_seed"][arm]) == 2
        for metric in ("proactive", "overall"):
            ci = r["diff_ci"][metric]
            assert ci["ci_low"] <= ci["ci_high"] and ci["samples"] == 20
    record = {"config": {"schemes": ["group"], "seeds": [0, 1]}, "results": {**results, "wall_seconds": 60}}
    table = render_ablation([record])
    assert "| group | **BehaviorSFT - GeneralSFT** (95% CI) |" in table and "over seeds 0, 1" in table


def test_apply_overrides_names_unknown_fields():
    c = toy_demo_config("x")
    apply_overrides(c, ["train.steps=3", "behavior.scheme=group"])
    assert c.train.steps == 3 and c.behavior.scheme == "group"
    with pytest.raises(ConfigError, match="train.stepz"):
        apply_overrides(c, ["train.stepz=3"])
