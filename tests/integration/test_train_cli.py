"""``python -m bsft_jax.train``: bad configs fail naming the problem; SIGTERM saves and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.checkpoint.read import read_meta
from tests.processes import ROOT, cli, subprocess_env, wait_for_steps, write_config


@pytest.mark.parametrize("extra, body, expected", [
    (["--config.optimizer.learnin_rate=1"], "", "learnin_rate"),
    ([], "    c.train.epochs = 3\n", "config.train.epochs: unknown field"),
    (["--config.mesh.data=3", "--config.mesh.fsdp=-1"], "", "config.mesh: (data=3, fsdp=-1, tensor=1) does not divide"),
    (["--config.model.source=hf", "--config.model.hf_path=/no/such/model"], "", "config.model.hf_path"),
    (["--config.train.global_batch_size=6", "--config.mesh.data=4"], "", "config.train.global_batch_size"),
])
def test_bad_config_exits_nonzero_naming_the_field(tmp_path, extra, body, expected):
    out = cli("--config", write_config(tmp_path, body), *extra, devices=4)
    assert out.returncode == 2, out.stderr[-2000:]
    assert expected in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    cfg = write_config(tmp_path, **{"train.steps": 100000, "checkpoint.every_steps": 100000, "train.log_every": 1})
    env = subprocess_env(JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "bsft_jax.train", "--config", cfg], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    wait_for_steps(proc, metrics, 3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM: saved step" in out
    steps = Checkpointer(str(tmp_path / "run")).all_steps()
    last_logged = max(json.loads(line)["step"] for line in metrics.read_text().splitlines())
    # the preemption checkpoint is the last finished step (no regular save could have happened)
    assert steps == [last_logged] and last_logged >= 3
    assert read_meta(str(tmp_path / "run"))["step"] == last_logged


@pytest.mark.parametrize("module", ["bsft_jax.train", "bsft_jax.evaluate", "bsft_jax.export"])
def test_help_prints_usage_and_exits_zero(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"python -m {module}" in out.stdout or "usage:" in out.stdout
    assert "--checkpoint" in out.stdout or "--config" in out.stdout
