"""bench/learning_curve.py: points from a run's metrics.jsonl, threshold crossings, the rendered table."""

from __future__ import annotations

import json

from bench.learning_curve import crossings, curve_config, curve_points, main, read_metrics
from bench.tables import render_learning_curve


def _rows():
    rows = []
    for step in range(1, 7):
        rows.append({"split": "train", "step": step, "input_tokens": 100.0 * step, "first_token_loss": 1.0 / step})
        if step % 2 == 0:
            acc = {2: 0.5, 4: 0.75, 6: 0.9}[step]
            rows.append({"split": "eval", "step": step, "steer/overall_f1": acc - 0.2, "steer/decision_accuracy": acc,
                         "steer/missed_intervention": 0.1, "steer/over_intervention": 0.2,
                         "steer/decision/Critical Value Flagging": acc, "steer/f1/Critical Value Flagging": acc})
    return rows


def test_points_count_real_tokens_and_cross_thresholds(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = _rows()
    rows.insert(3, {"split": "train", "step": 2, "input_tokens": 200.0})  # a resumed run repeats a step: last wins
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    points = curve_points(read_metrics(str(path)), rows_per_step_tokens=2048)
    assert [p["step"] for p in points] == [2, 4, 6]
    assert [p["tokens"] for p in points] == [300, 1000, 2100]  # cumulative input tokens, not rows x length
    assert points[1]["row_tokens"] == 4 * 2048
    assert points[2]["decision_per_category"] == {"Critical Value Flagging": 0.9}
    assert crossings(points) == {"70%": {"step": 4, "tokens": 1000}, "80%": {"step": 6, "tokens": 2100}}
    assert crossings(points[:1]) == {"70%": None, "80%": None}


def test_rendered_table_and_from_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    (run / "config.json").write_text(json.dumps({
        "model": {"hf_path": "builtin:x"}, "data": {"seq_len": 8},
        "train": {"global_batch_size": 2, "steer_eval_split": "validation", "steer_eval_items": 130}}))
    out, png = tmp_path / "lc.json", tmp_path / "lc.png"
    assert main(["--from_runs", f"BehaviorSFT={run}", "--out", str(out), "--png", str(png)]) == 0
    record = json.loads(out.read_text())
    assert record["results"]["arms"]["BehaviorSFT"]["split"] == "validation"
    assert png.read_bytes()[:4] == b"\x89PNG"
    md = render_learning_curve([record])
    assert "| BehaviorSFT | 4 | 1,000 | 75.0 |" in md and "validation split (130 scenes" in md
    assert "70% at step 4" in md
    assert main(["--from_runs", f"BehaviorSFT={tmp_path / 'nope'}", "--out", str(out)]) == 2
    # a branch copied from its trunk at step 2: only its own evaluations
    assert main(["--from_runs", f"BehaviorSFT={run},decay={run}@2", "--out", str(out), "--png", str(png)]) == 0
    arms = json.loads(out.read_text())["results"]["arms"]
    assert [p["step"] for p in arms["BehaviorSFT"]["points"]] == [2, 4, 6]
    assert [p["step"] for p in arms["decay"]["points"]] == [4, 6]
    assert main(["--from_runs", f"decay={run}@two", "--out", str(out)]) == 2


def test_curve_config_measures_on_test_and_keeps_no_best():
    from bsft_jax.setup.config import default_config

    c = default_config()
    c.checkpoint.keep_best_metric = "decision_accuracy"
    got = curve_config(c, run_dir="r", steps=5, eval_every=2, eval_items=13, max_new_tokens=8)
    assert got.train.steer_eval_split == "test" and got.checkpoint.keep_best_metric == ""
    assert got.train.steps == 5 and got.optimizer.warmup_steps == 5 and c.train.steps != 5  # a copy
