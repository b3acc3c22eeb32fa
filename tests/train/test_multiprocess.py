"""Two local processes (jax.distributed on loopback, 2 fake CPU devices each) = one process.

Tolerance: losses rtol 1e-5 (4 devices vs 1: the global reductions sum in another order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np

from bsft_jax.checkpoint import Checkpointer
from bsft_jax.train import run

from .common import tiny_config
from .test_cli import ROOT, write_config

STEPS = 4


def _losses(run_dir: str) -> dict[int, float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == len({r["step"] for r in train}), "a step was logged twice (by two processes?)"
    return {r["step"]: r["loss"] for r in train}


def test_two_processes_match_single_process(tmp_path):
    overrides = {"train.steps": STEPS, "mesh.data": -1, "checkpoint.every_steps": 2}
    cfg_file = write_config(tmp_path, **overrides)
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    out = subprocess.run([sys.executable, "launch/local.py", "--num_processes", "2", "--devices_per_process", "2",
                          "--timeout", "240", "--", "--config", cfg_file], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "[p0]" in out.stdout and "[p1]" in out.stdout
    assert "process 1 of 2, 2 local / 4 global devices" in out.stdout
    run_dir = str(tmp_path / "run")
    multi = _losses(run_dir)

    # each process saved its own data-iterator position; the state is global
    step_dir = os.path.join(run_dir, "checkpoints", str(STEPS))
    data_files = sorted(f for f in os.listdir(os.path.join(step_dir, "data")) if f.endswith(".json"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]
    assert Checkpointer(run_dir).all_steps() == [2, 4]

    single_cfg = tiny_config(str(tmp_path / "single"), str(tmp_path / "tok"), **overrides)
    run(single_cfg, devices=jax.devices()[:1])
    single = _losses(single_cfg.run_dir)
    assert sorted(multi) == sorted(single) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([multi[s] for s in sorted(multi)], [single[s] for s in sorted(single)], rtol=1e-5)
