"""The whole main job end to end at toy size: two fine-tunes, the four arms, the steering probe, resume."""

from __future__ import annotations

import json
import os

from bsft_jax.mainjob import EvalOptions, StageLog, main_job

from .toy import toy_demo_config

ARMS = ["few-shot (k=3)", "explicit instruction", "GeneralSFT", "BehaviorSFT"]


def test_main_job_four_arms_probe_and_resume(tmp_path, monkeypatch, caplog, toy_cache):
    monkeypatch.setenv("BSFT_JAX_CACHE", toy_cache)
    behavior = toy_demo_config(str(tmp_path / "bsft"), steps=2)
    general = toy_demo_config(str(tmp_path / "gsft"), "demo_scratch_generalsft.py", steps=2)
    out = str(tmp_path / "report")
    opts = EvalOptions(limit=13, max_new_tokens=6, batch_size=16)
    caplog.set_level("INFO")
    seconds = main_job(behavior, general, out, opts)
    assert list(seconds) == ["train BehaviorSFT", "train GeneralSFT", "evaluate"]
    assert "ETA" in caplog.text and "[3/3] evaluate: finished" in caplog.text

    report = json.load(open(os.path.join(out, "report.json")))
    assert report["runs"] == ARMS  # the evaluator's four columns, from one command
    for name in ARMS:
        m = report["metrics"][name]
        assert m["num_items"] == 13 and set(m["per_group"]) == {"reactive", "balanced", "proactive"}
        assert m["over_intervention"]["total"] + m["missed_intervention"]["total"] > 0
    assert report["metrics"]["BehaviorSFT"]["behavior"] is not None
    probe = report["steering_probe"]["BehaviorSFT"]
    assert set(probe) == {"answer", "intervene", "hold"}
    for rates in probe.values():
        assert rates["items"] == 13 and 0 <= rates["flag_rate"] + rates["none_rate"] <= 1 + 1e-9
    md = open(os.path.join(out, "report.md")).read()
    assert "| Category | Group | n | few-shot (k=3) | explicit instruction | GeneralSFT | BehaviorSFT |" in md
    assert "## Steering probe: BehaviorSFT" in md and "| hold |" in md
    assert open(os.path.join(out, "radar.png"), "rb").read(4) == b"\x89PNG"
    # both fine-tunes ran the steering evaluation during training
    lines = [json.loads(x) for x in open(os.path.join(behavior.run_dir, "metrics.jsonl"))]
    assert any("steer/behavior_accuracy" in r for r in lines)

    # a rerun skips every finished stage
    caplog.clear()
    again = main_job(behavior, general, out, opts)
    assert again == seconds and caplog.text.count("skipped") == 3


def test_stage_eta_scales_with_measured_speed(tmp_path):
    book = StageLog(str(tmp_path), {"a": 10.0, "b": 20.0, "c": 30.0})
    assert book.eta(["a", "b", "c"]) == 60.0
    book.finish("a", 20.0)  # twice as slow as estimated
    assert book.eta(["b", "c"]) == 100.0
    assert StageLog(str(tmp_path), {"a": 10.0}).done == {"a": 20.0}  # read back on a rerun


def test_smoke_config_cuts_the_recipe_and_keeps_it_valid(tmp_path):
    from bsft_jax.mainjob import SMOKE_OPTIONS, smoke_config
    from bsft_jax.setup.config import load_config_file
    from bsft_jax.setup.settings import Settings

    from .toy import ROOT

    for recipe in ("demo.py", "demo_generalsft.py"):
        full = load_config_file(os.path.join(ROOT, "configs", recipe), recipe)
        smoke = smoke_config(full)
        assert smoke.run_dir == full.run_dir + "_smoke" and smoke.train.steps == 4
        assert smoke.checkpoint.keep_best_metric == "" and smoke.train.eval_every == -1
        assert full.train.steps > 4  # the recipe itself is untouched
        Settings.from_config(smoke)  # still a valid config
    assert SMOKE_OPTIONS.limit == SMOKE_OPTIONS.baseline_limit == 13


def test_demo_recipe_v3_passes_validation():
    """The make-demo recipe: the decision knobs on, 512-token rows, selection on >= 90 open validation scenes."""
    from bsft_jax.setup.config import load_config_file, validate_config

    from .toy import ROOT

    for recipe in ("demo.py", "demo_generalsft.py"):
        c = load_config_file(os.path.join(ROOT, "configs", recipe), recipe)
        validate_config(c, num_devices=1)
        assert c.data.balance == "decision" and c.train.first_token_loss_weight > 1 and c.data.seq_len == 512
        assert c.train.steer_eval_items >= 130 and c.train.steer_eval_split == "validation"
        assert c.checkpoint.keep_best_metric == "decision_accuracy"
