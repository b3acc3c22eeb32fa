"""The run-directory lease end to end: real ``bsft_jax.train.loop.run`` calls on one run directory.

A second trainer on a live run directory is refused (in-process, and through the CLI: one line, exit 2)
while the first keeps training; the refused trainer wrote nothing. Once the first has finished (its lease
given back) the second resumes it. A trainer killed with -9 is taken over at once by the next run.
Export reads a run directory whose lease another trainer holds.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

import pytest

from bsft_jax.export import export_checkpoint
from bsft_jax.run.checkpoint import Checkpointer
from bsft_jax.run.lease import LEASE_FILE, RunDirBusyError, RunLease
from bsft_jax.train.loop import run

from .common import tiny_config
from .test_cli import cli, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def test_a_second_trainer_is_refused_while_the_first_runs_then_resumes_it(tmp_path):
    import jax

    one = jax.devices()[:1]
    run_dir, tok = str(tmp_path / "run"), str(tmp_path / "tok")
    at_step_2, go_on = threading.Event(), threading.Event()
    results: dict = {}

    def hold(step, _metrics):
        if step == 2:
            at_step_2.set()
            assert go_on.wait(300)

    def first():
        try:
            results["first"] = run(tiny_config(run_dir, tok), devices=one, on_step=hold)
        except BaseException as e:  # reported by the main thread
            results["first"] = e
            at_step_2.set()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert at_step_2.wait(300)
        assert os.path.isfile(os.path.join(run_dir, LEASE_FILE))
        files_before = sorted(os.listdir(run_dir))
        busy = rf"in use by another trainer: host .* pid {os.getpid()} .*last alive"
        with pytest.raises(RunDirBusyError, match=busy):
            run(tiny_config(run_dir, tok, **{"train.steps": 8}), devices=one)
        assert sorted(os.listdir(run_dir)) == files_before  # the refused trainer wrote nothing
    finally:
        go_on.set()
        thread.join()
    assert not isinstance(results["first"], BaseException), results["first"]
    assert results["first"].final_step == 6
    assert not os.path.exists(os.path.join(run_dir, LEASE_FILE))  # given back at the end
    second = run(tiny_config(run_dir, tok, **{"train.steps": 8}), devices=one)
    assert second.start_step == 6 and second.final_step == 8
    assert not os.path.exists(os.path.join(run_dir, LEASE_FILE))


def test_the_cli_refuses_in_one_line_and_export_reads_a_leased_run(tmp_path):
    run_dir = str(tmp_path / "run")
    import jax

    run(tiny_config(run_dir, str(tmp_path / "tok")), devices=jax.devices()[:1])
    with RunLease(run_dir) as lease:  # another trainer (this test process) holds the run directory
        out = cli("--config", write_config(tmp_path), "--config.train.steps=8")
        assert out.returncode == 2, out.stderr[-3000:]
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0] and "force_takeover" in errors[0], out.stderr
        assert "Traceback" not in out.stderr
        assert Checkpointer(run_dir).all_steps()[-1] == 6  # untouched
        exported = export_checkpoint(run_dir, str(tmp_path / "hf"))  # readers never need the lease
        assert os.path.isfile(os.path.join(exported, "config.json"))
        assert lease.held


def test_a_trainer_killed_with_sigkill_is_taken_over_at_once(tmp_path, caplog):
    run_dir, tok = str(tmp_path / "run"), str(tmp_path / "tok")
    killed = subprocess.run([sys.executable, "-c", _KILLED, run_dir, tok], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1"),
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert os.path.isfile(os.path.join(run_dir, LEASE_FILE))  # left behind by the dead trainer
    import jax

    with caplog.at_level(logging.WARNING, logger="bsft_jax.run.lease"):
        resumed = run(tiny_config(run_dir, tok), devices=jax.devices()[:1])
    assert resumed.start_step == 2 and resumed.final_step == 6
    assert "on this host no longer exists" in caplog.text
