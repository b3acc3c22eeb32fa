"""SIGTERM to a two-process job: both processes agree on a step (JAX's preemption sync point), save it, exit 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from bsft_jax.checkpoint.manager import Checkpointer
from tests.processes import ROOT, subprocess_env, wait_for_steps, write_config


def test_sigterm_on_two_processes_saves_one_agreed_step(tmp_path):
    cfg = write_config(tmp_path, **{"mesh.data": -1, "train.steps": 100000, "checkpoint.every_steps": 100000,
                                    "train.log_every": 1})
    env = subprocess_env()
    env.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.Popen([sys.executable, "launch/local.py", "--num_processes", "2", "--devices_per_process", "1",
                             "--timeout", "240", "--", "--config", cfg], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    wait_for_steps(proc, metrics, 3)
    proc.send_signal(signal.SIGTERM)  # the launcher forwards it to both processes, as a pod preemption would
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-4000:]
    saved = {p: int(s) for p, s in re.findall(r"\[(p\d)\] .*SIGTERM: saved step (\d+), exiting cleanly", out)}
    assert set(saved) == {"p0", "p1"} and saved["p0"] == saved["p1"], out[-4000:]
    assert Checkpointer(str(tmp_path / "run")).all_steps() == [saved["p0"]]
    data = os.path.join(tmp_path, "run", "checkpoints", str(saved["p0"]), "data")
    assert {f for f in os.listdir(data) if f.endswith(".json")} == {"process_0-of-2.json", "process_1-of-2.json"}
