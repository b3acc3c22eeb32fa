"""``python -m bsft_jax.evaluate`` end to end on the demo: train BehaviorSFT and GeneralSFT briefly,
run the paper's four-column comparison, and check the report files hold the numbers of the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bsft_jax.evaluate.metrics import ScoredItem, compute_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = ["--config.data.demo.num_train=390", "--config.data.demo.num_validation=26", "--config.data.demo.num_test=52",
        "--config.data.demo.tokenizer_vocab=512"]
TRAIN = [*DEMO, "--config.train.global_batch_size=8", "--config.data.seq_len=256", "--config.optimizer.warmup_steps=2",
         "--config.checkpoint.every_steps=8", "--config.train.log_every=4", "--config.data.eval_batches=1",
         "--config.train.steps=8", "--config.logging.tensorboard=False"]


def run(module: str, *args: str, cache: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, BSFT_JAX_CACHE=cache)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_demo_train_then_evaluate_comparison(tmp_path):
    cache = str(tmp_path / "cache")
    behavior, general, out = (str(tmp_path / n) for n in ("behavior", "general", "eval"))
    for config, run_dir in (("configs/demo_scratch.py", behavior), ("configs/demo_scratch_generalsft.py", general)):
        done = run("bsft_jax.train", "--config", config, *TRAIN, f"--config.run_dir={run_dir}", cache=cache)
        assert done.returncode == 0, done.stderr[-3000:]
    done = run("bsft_jax.evaluate", "--config", "configs/demo_scratch.py", *DEMO, "--checkpoint", behavior,
               "--general_checkpoint", general, "--limit", "26", "--max_new_tokens", "16", "--batch_size", "16",
               "--out_dir", out, cache=cache)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.load(open(os.path.join(out, "report.json")))
    assert report["runs"] == ["few-shot (k=3)", "explicit instruction", "GeneralSFT", "BehaviorSFT"]
    for name in report["runs"]:
        path = os.path.join(out, f"predictions_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)}.jsonl")
        items = [ScoredItem(**json.loads(line)) for line in open(path)]
        assert len(items) == 26 and len({i.category for i in items}) == 13  # --limit takes categories in turn
        # the report holds exactly the numbers these predictions give
        assert report["metrics"][name] == json.loads(json.dumps(compute_metrics(items)))
        info = report["info"][name]
        assert info["decode tokens/s"] > 0 and info["generated tokens"] > 0
    assert report["metrics"]["BehaviorSFT"]["behavior"] is not None
    assert report["metrics"]["GeneralSFT"]["behavior"] is None
    assert report["info"]["BehaviorSFT"]["checkpoint"] == f"{behavior}@8"
    md = open(os.path.join(out, "report.md")).read()
    header = "| Category | Group | n | few-shot (k=3) | explicit instruction | GeneralSFT | BehaviorSFT |"
    assert header in md and header in done.stdout  # the table is printed too
    assert "| decode tokens/s |" in md
    with open(os.path.join(out, "radar.png"), "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_evaluate_cli_names_a_missing_checkpoint(tmp_path):
    done = run("bsft_jax.evaluate", "--config", "configs/demo_scratch.py", "--checkpoint", str(tmp_path / "nope"),
               cache=str(tmp_path / "cache"), timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --checkpoint=") and "nope" in lines[0], done.stderr
    assert "not a folder" in lines[0]
