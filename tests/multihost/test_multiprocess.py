"""Two local processes (jax.distributed on loopback) train the demo model like one process would.

launch/local.py starts 2 processes with 1 fake CPU device each; each process feeds its own data
shard. The reference is computed here, in one process on one device, from the global batch that
the two shards make together (shard 0's rows, then shard 1's), with the same initialisation.
Tolerance: losses rtol 1e-5 (2 devices vs 1: the reductions sum in another order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np

from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.models.sharding import make_mesh
from bsft_jax.setup.config import load_config_file
from bsft_jax.setup.model_setup import build_fresh
from bsft_jax.setup.settings import Settings
from bsft_jax.train.data import train_iterator
from bsft_jax.train.distributed import DataShard
from bsft_jax.train.optim import make_optimizer
from bsft_jax.train.step import Trainer
from tests.processes import ROOT, subprocess_env

STEPS, BATCH = 3, 4
OVERRIDES = {"train.steps": STEPS, "train.global_batch_size": BATCH, "data.seq_len": 128, "mesh.data": -1,
             "mesh.fsdp": 1, "train.eval_every": -1, "checkpoint.every_steps": STEPS, "train.log_every": 1,
             "optimizer.warmup_steps": 1}


def _reference_losses(run_dir: str) -> list[float]:
    cfg = load_config_file(os.path.join(ROOT, "configs", "demo_scratch.py"), "demo_scratch.py")
    cfg.run_dir = run_dir
    for key, value in OVERRIDES.items():
        section, field = key.split(".")
        cfg[section][field] = value
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    with jax.set_mesh(mesh):
        bundle = build_fresh(Settings.from_config(cfg), mesh)
        tx, schedule = make_optimizer(cfg.optimizer, cfg.train.steps)
        trainer = Trainer(bundle.config, tx, schedule, mesh)
        state = trainer.init_state(bundle.model, cfg.seed)
        trainer.compile(BATCH, cfg.data.seq_len)
        s = Settings.from_config(cfg)
        shards = [train_iterator(s.data, s.behavior.spec, bundle.tokenizer, DataShard(i, 2, BATCH // 2))
                  for i in range(2)]
        losses = []
        for _ in range(STEPS):
            parts = [next(it) for it in shards]
            batch = {k: jax.device_put(np.concatenate([p[k] for p in parts])) for k in parts[0]}
            state, metrics = trainer.step(state, batch)
            losses.append(float(metrics["loss"]))
    return losses


def _train_on_two_processes(run_dir: str, overrides: dict) -> subprocess.CompletedProcess:
    """launch/local.py: the demo_scratch recipe with ``overrides`` on 2 processes of 1 CPU device each."""
    args = ["--config", "configs/demo_scratch.py", f"--config.run_dir={run_dir}"]
    args += [f"--config.{k}={v}" for k, v in overrides.items()]
    env = subprocess_env()
    env.pop("JAX_NUM_CPU_DEVICES", None)
    out = subprocess.run([sys.executable, "launch/local.py", "--num_processes", "2", "--devices_per_process", "1",
                          "--timeout", "400", "--", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=450)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    return out


def test_two_processes_match_single_process_on_the_demo_model(tmp_path):
    run_dir = str(tmp_path / "run")
    out = _train_on_two_processes(run_dir, OVERRIDES)
    logs = out.stderr  # the launcher keeps each process's stream: logging goes to stderr
    assert "process 1 of 2, 1 local / 2 global devices" in logs
    assert "[p0]" in logs and "step 3/3" in logs
    assert "step 3/3" not in "".join(line for line in logs.splitlines(True) if line.startswith("[p1]"))  # p0 logs

    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # written once, by process 0
    # the state is one global checkpoint; the data position is saved per process
    step_dir = os.path.join(run_dir, "checkpoints", str(STEPS))
    data_files = sorted(f for f in os.listdir(os.path.join(step_dir, "data")) if f.endswith(".json"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]
    assert Checkpointer(run_dir).all_steps() == [STEPS]

    reference = _reference_losses(str(tmp_path / "ref"))
    np.testing.assert_allclose([r["loss"] for r in records], reference, rtol=1e-5)
    assert reference[-1] < reference[0]


def test_two_processes_run_the_steering_eval_and_keep_the_best(tmp_path):
    """Steering evaluation and keep-best in a two-process run: every process decodes its share of the
    batch (the Sampler's batch is sharded over the global mesh), process 0 writes the steer/ metrics
    once, and best/ is one global checkpoint that the evaluator reads."""
    run_dir = str(tmp_path / "run")
    overrides = dict(OVERRIDES, **{"train.eval_every": 2, "train.steps": 4, "checkpoint.every_steps": 4,
                                   "train.steer_eval_items": 4, "train.steer_max_new_tokens": 6,
                                   "checkpoint.keep_best_metric": "overall_f1", "data.eval_batches": 1})
    _train_on_two_processes(run_dir, overrides)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]  # once per eval, by process 0
    for r in evals:
        assert 0.0 <= r["steer/overall_f1"] <= 1.0 and 0.0 <= r["steer/behavior_accuracy"] <= 1.0, r
    with open(os.path.join(run_dir, "best.json")) as f:
        best = json.load(f)
    assert best["step"] in (2, 4)
    assert Checkpointer(os.path.join(run_dir, "best")).all_steps() == [best["step"]]
