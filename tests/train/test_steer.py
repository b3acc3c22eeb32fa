"""Steering evaluation during training: steer/* metrics logged, keep-best checkpoint, early stopping."""

from __future__ import annotations

import json
import os

import pytest

from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.setup.config import ConfigError
from bsft_jax.train.loop import run
from bsft_jax.train.steer import BestKeeper, check_best_metric

from ..toy import toy_demo_config


def _eval_lines(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == "eval"]


def test_steer_metrics_logged_and_best_checkpoint_kept(tmp_path, monkeypatch, toy_cache):
    monkeypatch.setenv("BSFT_JAX_CACHE", toy_cache)
    cfg = toy_demo_config(str(tmp_path / "run"), steps=4)
    cfg.checkpoint.keep_best_metric = "overall_f1"
    result = run(cfg)
    assert result.final_step == 4
    lines = _eval_lines(cfg.run_dir)
    assert [r["step"] for r in lines] == [2, 4]  # every eval_every steps, and the final one
    for r in lines:
        for key in ("steer/overall_f1", "steer/behavior_accuracy", "steer/proactive_f1", "steer/unparsed"):
            assert 0.0 <= r[key] <= 1.0, (key, r)
    best = json.load(open(os.path.join(cfg.run_dir, "best.json")))
    values = {r["step"]: r["steer/overall_f1"] for r in lines}
    assert best["value"] == max(values.values())
    assert best["step"] == min(s for s, v in values.items() if v == best["value"])  # first step that reached it
    assert Checkpointer(os.path.join(cfg.run_dir, "best")).all_steps() == [best["step"]]
    # the best folder is an evaluable run directory: config.json here, the tokenizer of the run
    from bsft_jax.evaluate.compare import load_run

    _, tokenizer, _, style, step = load_run(os.path.join(cfg.run_dir, "best"), None, "float32", None)
    assert step == best["step"] and style == "behavior_sft" and "<|behavior:hold|>" in tokenizer.get_vocab()


def test_early_stopping_after_patience(tmp_path, monkeypatch, toy_cache):
    monkeypatch.setenv("BSFT_JAX_CACHE", toy_cache)
    cfg = toy_demo_config(str(tmp_path / "run"))
    cfg.train.update(steps=40, eval_every=1, steer_eval_items=0)
    # a held-out loss that never improves: the first evaluation stays the best
    monkeypatch.setattr("bsft_jax.train.loop.held_out_metrics", lambda *a, **k: {"loss": 1.0})
    cfg.checkpoint.keep_best_metric = "loss"
    cfg.train.early_stop_patience = 2
    result = run(cfg)
    assert result.final_step == 3  # best at step 1, no improvement at 2 and 3 -> stop
    assert Checkpointer(cfg.run_dir).latest_step() == 3  # the stopping step is saved (resumable)
    assert json.load(open(os.path.join(cfg.run_dir, "best.json")))["evals_since_best"] == 2


def test_best_metric_checks_name_the_field():
    with pytest.raises(ConfigError, match="checkpoint.keep_best_metric"):
        check_best_metric("f1", 10, 5, 0)
    with pytest.raises(ConfigError, match="steer_eval_items"):
        check_best_metric("overall_f1", 0, 5, 0)
    with pytest.raises(ConfigError, match="train.early_stop_patience"):
        check_best_metric("", 10, 5, 3)
    check_best_metric("loss", 0, 0, 2)


def test_best_keeper_direction_and_resume(tmp_path):
    run_dir = str(tmp_path)
    open(os.path.join(run_dir, "config.json"), "w").write("{}")
    saved = []
    keeper = BestKeeper(run_dir, "over_intervention", patience=2)  # lower is better
    assert not keeper.update(1, {"steer/over_intervention": 0.5}, lambda c: saved.append(1))
    assert not keeper.update(2, {"steer/over_intervention": 0.6}, lambda c: saved.append(2))
    keeper.close()
    resumed = BestKeeper(run_dir, "over_intervention", patience=2)  # counts survive a restart
    assert resumed.update(3, {"steer/over_intervention": 0.5}, lambda c: saved.append(3))  # a tie is no new best
    assert saved == [1]
