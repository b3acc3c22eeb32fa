"""Damaged and interrupted checkpoints through the real CLIs: train resumes past them, export skips or names them.

* a truncated array file in the newest step: ``python -m bsft_jax.train`` warns naming the step and
  the reason, sets it aside as ``<step>.corrupt`` (files untouched), resumes from the previous step
  and ends with the same weights as an uninterrupted run;
* ``python -m bsft_jax.export`` on that run exports the previous step with a warning, or with
  ``--step`` of the damaged one exits 2 with one line offering the others; the run is unchanged;
* kill -9 inside the asynchronous save window (a hook in Orbax's commit, tests/train/kill_window.py):
  the rerun resumes from the last complete step and reaches the uninterrupted run's weights.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from bsft_jax.run.checkpoint import Checkpointer, CheckpointError, load_params
from bsft_jax.run.recovery import newest_readable
from bsft_jax.train.loop import run

from .common import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 8  # checkpoints every 2 steps, keep 3


class _Stop(RuntimeError):
    pass


def _config_file(run_dir: str, tok: str) -> str:
    """A config file (beside ``run_dir``) for the CLI: tiny_config with ``STEPS`` steps."""
    path = run_dir + "_cfg.py"
    with open(path, "w") as f:
        f.write("from tests.train.common import tiny_config\n\n"
                "def get_config():\n"
                f"    return tiny_config({run_dir!r}, {tok!r}, **{{'train.steps': {STEPS}}})\n")
    return path


def _env() -> dict[str, str]:
    return dict(os.environ, JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _tree(folder) -> dict[str, str]:
    """relative path -> sha1 of every file under ``folder`` (the state a failed command must not change)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "**"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
    return out


def _params(run_dir: str, step: int) -> list[np.ndarray]:
    model, _, meta = load_params(run_dir, step)
    assert meta["step"] == step
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


def _assert_same_weights(got: list[np.ndarray], ref: list[np.ndarray]) -> None:
    assert len(got) == len(ref)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)


def _truncate_newest_params(run_dir: str, step: int) -> str:
    """Cuts the largest array data file of ``step``'s params in half, as a failing disk or partial copy would."""
    files = glob.glob(os.path.join(run_dir, "checkpoints", str(step), "params", "**", "d", "*"), recursive=True)
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run and a run stopped after step 6 whose step 6 was then damaged on disk."""
    base = tmp_path_factory.mktemp("recovery")
    tok = str(base / "tok")
    ref = tiny_config(str(base / "ref"), tok, **{"train.steps": STEPS})
    run(ref, devices=jax.devices()[:1])
    damaged = tiny_config(str(base / "damaged"), tok, **{"train.steps": STEPS})

    def stop(step, _metrics):
        if step == 7:  # steps 2, 4 and 6 are saved
            raise _Stop

    with pytest.raises(_Stop):
        run(damaged, devices=jax.devices()[:1], on_step=stop)
    assert Checkpointer(damaged.run_dir).all_steps() == [2, 4, 6]
    _truncate_newest_params(damaged.run_dir, 6)
    return {"base": base, "tok": tok, "ref": ref.run_dir, "damaged": damaged.run_dir,
            "ref_params": _params(ref.run_dir, STEPS)}


def _copy(runs, name: str) -> str:
    dst = str(runs["base"] / name)
    shutil.copytree(runs["damaged"], dst)
    return dst


def test_train_resume_sets_aside_damaged_step_and_matches_uninterrupted_run(runs):
    run_dir = _copy(runs, "resume")
    step6 = _tree(os.path.join(run_dir, "checkpoints", "6"))
    out = _cli("bsft_jax.train", "--config", _config_file(run_dir, runs["tok"]))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    failed = [line for line in out.stderr.splitlines() if "step 6 restore failed (" in line]
    assert failed and f"{run_dir}/checkpoints/6/params" in failed[0], out.stderr[-3000:]  # the file named
    assert "set aside damaged checkpoint step 6 as 6.corrupt" in out.stderr
    assert f"resuming {run_dir} from step 4" in out.stderr
    # never deleted: the damaged step is kept byte for byte beside the new checkpoints
    assert _tree(os.path.join(run_dir, "checkpoints", "6.corrupt")) == step6
    assert Checkpointer(run_dir).all_steps() == [4, 6, STEPS]
    _assert_same_weights(_params(run_dir, STEPS), runs["ref_params"])


def test_train_with_no_restorable_step_exits_2_and_changes_nothing(runs):
    run_dir = _copy(runs, "all_damaged")
    for step in (2, 4):
        _truncate_newest_params(run_dir, step)
    before = _tree(run_dir)
    out = _cli("bsft_jax.train", "--config", _config_file(run_dir, runs["tok"]))
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-6000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert f"{run_dir}/checkpoints: no checkpoint step can be restored (step 6: " in errors[0]
    assert "; step 2: " in errors[0] and "nothing was set aside" in errors[0]
    assert _tree(run_dir) == before  # not a file written, renamed or removed


def test_export_skips_a_damaged_newest_step_and_names_it_with_step(runs):
    run_dir = _copy(runs, "export")
    before = _tree(run_dir)
    out_dir = str(runs["base"] / "hf")
    done = _cli("bsft_jax.export", "--checkpoint", run_dir, "--out", out_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "step 6 restore failed" in done.stderr and "using step 4" in done.stderr, done.stderr[-3000:]
    assert done.stdout.strip() == out_dir and os.path.isfile(os.path.join(out_dir, "config.json"))

    bad = _cli("bsft_jax.export", "--checkpoint", run_dir, "--out", str(runs["base"] / "hf6"), "--step", "6")
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "Traceback" not in bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{run_dir}/checkpoints/6: step 6 cannot be restored (" in errors[0]
    assert "choose another step with --step (available: [2, 4])" in errors[0]
    assert not os.path.exists(runs["base"] / "hf6")
    assert _tree(run_dir) == before  # readers change nothing, not even the damaged step

    # the evaluator's reader follows the same rules in-process
    step, (_, _, meta) = newest_readable(run_dir, lambda s: load_params(run_dir, s))
    assert step == 4 and meta["step"] == 4
    with pytest.raises(CheckpointError, match="step 6 cannot be restored"):
        newest_readable(run_dir, lambda s: load_params(run_dir, s), 6)


def test_kill_9_inside_async_save_then_rerun_resumes_from_last_complete_step(runs, tmp_path):
    run_dir = str(tmp_path / "killed")
    cfg = _config_file(run_dir, runs["tok"])
    marker = str(tmp_path / "in_save_window")
    proc = subprocess.Popen([sys.executable, "-m", "tests.train.kill_window", marker, "4", "--config", cfg], cwd=ROOT,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not os.path.exists(marker) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.path.exists(marker), f"the save of step 4 never reached its commit: {proc.communicate()[1][-3000:]}"
    proc.send_signal(signal.SIGKILL)  # inside the save window: arrays written, commit not done
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with open(marker) as f:
        in_flight = f.read()
    assert os.path.isdir(in_flight) and os.path.isdir(os.path.join(in_flight, "params"))  # a partial save is on disk
    assert Checkpointer(run_dir).all_steps() == [2]  # ... but it is not a step

    out = _cli("bsft_jax.train", "--config", cfg)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming {run_dir} from step 2" in out.stderr and "Traceback" not in out.stderr
    assert Checkpointer(run_dir).all_steps() == [4, 6, STEPS]
    _assert_same_weights(_params(run_dir, STEPS), runs["ref_params"])
    metrics = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [m["step"] for m in metrics if m["split"] == "train"][-6:] == [3, 4, 5, 6, 7, 8]  # redone from 3
