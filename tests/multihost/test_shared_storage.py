"""The shared-storage check at the start of a multi-host run, with two real local processes.

Two processes on one machine share its disk, so two *different* local run directories stand in
for two hosts that each write to their own disk: the training CLI must stop on both with the one
clear line (exit 2, no traceback). Given one directory, the check passes on both.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.processes import ROOT, subprocess_env

sys.path.insert(0, os.path.join(ROOT, "launch"))
from local import free_port

MESSAGE = "the run directory must be storage that all hosts share, such as gs://bucket/run or NFS"

_CHECK_ONLY = """
import sys
from bsft_jax.setup.settings import DistributedSettings
from bsft_jax.train import distributed
from bsft_jax.train.shared_storage import check_shared_run_dir
port, pid, run_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
distributed.maybe_initialize(DistributedSettings(initialize="auto", coordinator_address=f"127.0.0.1:{port}",
                                                 num_processes=2, process_id=pid))
check_shared_run_dir(run_dir)
print("shared ok")
"""


def _env() -> dict[str, str]:
    env = subprocess_env(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    return env


def _two(cmds: list[list[str]]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return outs


def test_training_stops_on_every_process_when_run_dirs_differ(tmp_path):
    port = free_port()
    cmds = [[sys.executable, "-m", "bsft_jax.train", "--config", "configs/demo_scratch.py",
             f"--config.run_dir={tmp_path / f'host{i}' / 'run'}", "--config.mesh.data=-1", "--config.mesh.fsdp=1",
             f"--config.distributed.coordinator_address=127.0.0.1:{port}", "--config.distributed.num_processes=2",
             f"--config.distributed.process_id={i}"] for i in range(2)]
    for i, out in enumerate(_two(cmds)):
        assert out.returncode == 2, (i, out.stderr[-3000:])
        errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and MESSAGE in errors[0], (i, out.stderr[-3000:])
        assert "process(es) [1] of 2" in errors[0]
        assert "Traceback" not in out.stderr
    # nothing was trained or checkpointed
    assert not (tmp_path / "host0" / "run" / "checkpoints").exists()


def test_check_passes_on_one_shared_run_dir(tmp_path):
    port = free_port()
    run_dir = str(tmp_path / "shared")
    outs = _two([[sys.executable, "-c", _CHECK_ONLY, str(port), str(i), run_dir] for i in range(2)])
    for i, out in enumerate(outs):
        assert out.returncode == 0 and "shared ok" in out.stdout, (i, out.stderr[-3000:])
    assert os.listdir(run_dir) == []  # process 0 removed its token file
