"""The run-directory lease end to end: real ``bsft_jax.train.loop.run`` calls on one run directory.

A second trainer on a live run directory is refused (in-process, and through the CLI's ``main``: one line,
exit 2) while the first keeps training; the refused trainer wrote nothing. Once the first has finished
(its lease given back) the second resumes it. Export reads a run directory whose lease another trainer
holds. A trainer killed with -9 (a real process) is taken over at once by the next run:
tests/integration/test_lease_run.py.
"""

from __future__ import annotations

import os
import threading

import pytest

from bsft_jax.checkpoint.lease import LEASE_FILE, RunDirBusyError, RunLease
from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.export import export_checkpoint
from bsft_jax.train.loop import run
from tests.train.cli_cases import config_file
from tests.train.cli_main import run_in_process

from .common import tiny_config


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


def test_the_cli_refuses_in_one_line_and_export_reads_a_leased_run(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    import jax

    run(tiny_config(run_dir, str(tmp_path / "tok")), devices=jax.devices()[:1])
    with RunLease(run_dir) as lease:  # another trainer (this test process) holds the run directory
        code, out, err = run_in_process(["-m", "bsft_jax.train", "--config", config_file(tmp_path / "cfg", run_dir),
                                         "--config.train.steps=8"], capsys)
        assert code == 2, err[-3000:]
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0] and "force_takeover" in errors[0], err
        assert "Traceback" not in err + out
        assert Checkpointer(run_dir).all_steps()[-1] == 6  # untouched
        exported = export_checkpoint(run_dir, str(tmp_path / "hf"))  # readers never need the lease
        assert os.path.isfile(os.path.join(exported, "config.json"))
        assert lease.held
