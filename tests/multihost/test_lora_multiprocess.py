"""LoRA on two local processes (jax.distributed on loopback) equals one process; the 2-process checkpoint
(adapters sharded over both processes' devices) exports as a merged model from one process.

Same set-up and tolerance as test_multiprocess (losses rtol 1e-5: 2 devices vs 1 sum in another order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np

from bsft_jax.export import export_checkpoint
from bsft_jax.models.sharding import make_mesh
from bsft_jax.setup.config import load_config_file
from bsft_jax.setup.model_setup import build_fresh
from bsft_jax.setup.settings import Settings
from bsft_jax.train.data import train_iterator
from bsft_jax.train.distributed import DataShard
from bsft_jax.train.lora import make_trainer
from bsft_jax.train.optim import make_optimizer
from tests.processes import ROOT, subprocess_env

from .test_multiprocess import BATCH, STEPS

OVERRIDES = {"train.steps": STEPS, "train.global_batch_size": BATCH, "data.seq_len": 128, "mesh.data": 1,
             "mesh.fsdp": -1, "train.eval_every": -1, "checkpoint.every_steps": STEPS, "train.log_every": 1,
             "optimizer.warmup_steps": 1, "optimizer.learning_rate": 1e-2, "model.lora.rank": 4}


def _reference_losses(run_dir: str) -> list[float]:
    cfg = load_config_file(os.path.join(ROOT, "configs", "demo_scratch.py"), "demo_scratch.py")
    cfg.run_dir = run_dir
    for key, value in OVERRIDES.items():
        *parents, field = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[field] = value
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    with jax.set_mesh(mesh):
        s = Settings.from_config(cfg)
        bundle = build_fresh(s, mesh)
        tx, schedule = make_optimizer(s.optimizer, s.train.steps)
        trainer = make_trainer(s, bundle, tx, schedule, mesh)
        state = trainer.init_state(bundle.model, s.seed)
        trainer.compile(BATCH, s.data.seq_len)
        shards = [train_iterator(s.data, s.behavior.spec, bundle.tokenizer, DataShard(i, 2, BATCH // 2))
                  for i in range(2)]
        losses = []
        for _ in range(STEPS):
            parts = [next(it) for it in shards]
            batch = {k: jax.device_put(np.concatenate([p[k] for p in parts])) for k in parts[0]}
            state, metrics = trainer.step(state, batch)
            losses.append(float(metrics["loss"]))
    return losses


def test_lora_two_processes_match_one_and_export_from_one(tmp_path):
    run_dir = str(tmp_path / "run")
    args = ["--config", "configs/demo_scratch.py", f"--config.run_dir={run_dir}"]
    args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    env = subprocess_env()
    env.pop("JAX_NUM_CPU_DEVICES", None)
    out = subprocess.run([sys.executable, "launch/local.py", "--num_processes", "2", "--devices_per_process", "1",
                          "--timeout", "400", "--", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=450)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    reference = _reference_losses(str(tmp_path / "ref"))
    np.testing.assert_allclose([r["loss"] for r in records], reference, rtol=1e-5)
    assert reference[-1] < reference[0]
    merged = export_checkpoint(run_dir, str(tmp_path / "merged"), dtype="float32")
    assert os.path.isfile(os.path.join(merged, "model.safetensors.index.json"))
