"""The run-directory lease end to end across processes: a trainer killed with -9 in its own process is
taken over at once by the next run (the in-process cases are in tests/train/test_lease_run.py)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from bsft_jax.checkpoint.lease import LEASE_FILE
from bsft_jax.train.loop import run
from tests.processes import ROOT
from tests.train.common import tiny_config

# A trainer that SIGKILLs itself once step 3 is computed (after step 2's save). argv: run_dir, tokenizer_dir
_KILLED = """
import os, signal, sys
from tests.train.common import tiny_config
from bsft_jax.train.loop import run
def kill(step, _metrics):
    if step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
run(tiny_config(sys.argv[1], sys.argv[2], **{"checkpoint.async_save": False}), on_step=kill)
"""


def test_a_trainer_killed_with_sigkill_is_taken_over_at_once(tmp_path, caplog):
    run_dir, tok = str(tmp_path / "run"), str(tmp_path / "tok")
    killed = subprocess.run([sys.executable, "-c", _KILLED, run_dir, tok], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1"),
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert os.path.isfile(os.path.join(run_dir, LEASE_FILE))  # left behind by the dead trainer
    import jax

    with caplog.at_level(logging.WARNING, logger="bsft_jax.checkpoint.lease"):
        resumed = run(tiny_config(run_dir, tok), devices=jax.devices()[:1])
    assert resumed.start_step == 2 and resumed.final_step == 6
    assert "on this host no longer exists" in caplog.text
