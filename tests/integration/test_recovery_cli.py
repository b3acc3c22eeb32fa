"""Damaged and interrupted checkpoints through the real CLIs: train resumes past them, export skips or names them.

* a truncated array file in the newest step: ``python -m bsft_jax.train`` warns naming the step and
  the reason, sets it aside as ``<step>.corrupt`` (files untouched), resumes from the previous step
  and ends with the same weights as an uninterrupted run;
* ``python -m bsft_jax.export`` on that run exports the previous step with a warning, or with
  ``--step`` of the damaged one exits 2 with one line offering the others; the run is unchanged;
* kill -9 inside the asynchronous save window (a hook in Orbax's array writes or its commit,
  tests/integration/kill_window.py):
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

from bsft_jax.checkpoint.layout import CheckpointError
from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.checkpoint.read import load_params
from bsft_jax.checkpoint.recovery import newest_readable
from bsft_jax.train.loop import run
from tests.processes import ROOT, subprocess_env
from tests.train.common import tiny_config

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
    return subprocess_env(JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu")


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


@pytest.mark.parametrize("damage", ["truncated_array_file", "deleted_manifest"])
def test_train_resume_sets_aside_damaged_step_and_matches_uninterrupted_run(runs, damage):
    run_dir = _copy(runs, f"resume_{damage}")
    if damage == "deleted_manifest":  # the OCDBT index itself is gone: every array of the step fails to open
        os.remove(os.path.join(run_dir, "checkpoints", "6", "params", "manifest.ocdbt"))
    step6 = _tree(os.path.join(run_dir, "checkpoints", "6"))
    out = _cli("bsft_jax.train", "--config", _config_file(run_dir, runs["tok"]))
    assert out.returncode == 0, out.stderr[-3000:]
    # the step's other (abandoned) reads fail too: they are not reported, only the first reason is
    assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr, out.stderr[-6000:]
    assert " ERROR " not in out.stderr and "never retrieved" not in out.stderr, out.stderr[-6000:]
    failed = [line for line in out.stderr.splitlines() if "step 6 restore failed (" in line]
    assert failed and f"{run_dir}/checkpoints/6/params" in failed[0], out.stderr[-3000:]  # the file named
    assert "set aside damaged checkpoint step 6 as 6.corrupt" in out.stderr
    assert out.stderr.count("train] resuming ") == 1 and f"resuming {run_dir} from step 4" in out.stderr  # once
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


def test_resume_with_a_changed_model_shape_is_refused_naming_the_field(runs):
    run_dir = _copy(runs, "changed_model")
    before = _tree(run_dir)
    out = _cli("bsft_jax.train", "--config", _config_file(run_dir, runs["tok"]),
               "--config.model.arch.intermediate_size=128")
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("error: config.model.arch.intermediate_size=128 differs from 64 in "
                               f"{run_dir}/config.json: a resumed run keeps the model it was started with")
    assert _tree(run_dir) == before


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
    errors = [line for line in bad.stderr.splitlines() if line.strip()]  # the one line, no Orbax notices before it
    assert len(errors) == 1 and errors[0].startswith(f"error: {run_dir}/checkpoints/6: step 6 cannot be restored (")
    assert "choose another step with --step (available: [2, 4])" in errors[0]
    assert not os.path.exists(runs["base"] / "hf6")
    assert _tree(run_dir) == before  # readers change nothing, not even the damaged step

    # the evaluator's reader follows the same rules in-process
    step, (_, _, meta) = newest_readable(run_dir, lambda s: load_params(run_dir, s))
    assert step == 4 and meta["step"] == 4
    with pytest.raises(CheckpointError, match="step 6 cannot be restored"):
        newest_readable(run_dir, lambda s: load_params(run_dir, s), 6)


def _jsonl_data(folder) -> str:
    from bsft_jax.data import generate_split

    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", 6), ("test", 4)):
        with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(r.to_json()) + "\n" for r in generate_split(split, n, seed=1))
    return str(folder)


def test_evaluate_skips_a_damaged_newest_step_and_names_it_with_step(runs):
    """``python -m bsft_jax.evaluate`` on the damaged run: the previous step with a warning naming step 6;
    ``--step 6``: one line offering the others; a behavior the run lacks: one line before decoding."""
    run_dir = _copy(runs, "evaluate")
    before = _tree(run_dir)
    data = _jsonl_data(runs["base"] / "eval_data")
    cfg = _config_file(str(runs["base"] / "eval_cfg_run"), runs["tok"])
    common = ["--config", cfg, "--config.data.source=jsonl", f"--config.data.path={data}", "--baselines=",
              "--checkpoint", run_dir, "--max_new_tokens", "2", "--limit", "2"]
    procs = {name: subprocess.Popen([sys.executable, "-m", "bsft_jax.evaluate", *common, "--out_dir",
                                     str(runs["base"] / f"eval_{name}"), *extra], cwd=ROOT, env=_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, extra in (("newest", []), ("step6", ["--step", "6"]), ("force", ["--force_behavior=nope"]))}
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        done[name] = (proc.returncode, out, err)
    code, out, err = done["newest"]
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert "step 6 restore failed" in err and f"using step 4 of {run_dir}: newer step(s) [6]" in err, err[-3000:]
    report = json.load(open(runs["base"] / "eval_newest" / "report.json"))
    assert report["info"]["BehaviorSFT"]["checkpoint"] == f"{run_dir}@4"
    for name, expected in (("step6", f"error: {run_dir}/checkpoints/6: step 6 cannot be restored ("),
                           ("force", "error: --force_behavior='nope': cannot force a behavior the run does not")):
        code, out, err = done[name]
        lines = [line for line in err.splitlines() if line.strip()]
        if name == "force":  # the run is read first (with the fallback's warnings), then refused before decoding
            assert all(" WARNING bsft_jax.checkpoint.recovery] " in line for line in lines[:-1]), err[-3000:]
            lines = lines[-1:]
        assert code == 2 and len(lines) == 1 and lines[0].startswith(expected), err[-3000:]
        assert "Traceback" not in err and not os.path.exists(runs["base"] / f"eval_{name}")
    assert "choose another step with --step (available: [2, 4])" in done["step6"][2]
    assert _tree(run_dir) == before  # a reader changes nothing, not even the damaged step


@pytest.mark.parametrize("point", ["arrays", "commit"])
def test_kill_9_inside_async_save_then_rerun_resumes_from_last_complete_step(runs, tmp_path, point):
    """kill -9 while step 4's arrays are being written, or once they are all written and the commit is due."""
    run_dir = str(tmp_path / "killed")
    cfg = _config_file(run_dir, runs["tok"])
    marker = str(tmp_path / "in_save_window")
    proc = subprocess.Popen([sys.executable, "-m", "tests.integration.kill_window", marker, "4", point,
                             "--config", cfg], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 600
    while not os.path.exists(marker) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.path.exists(marker), f"the save of step 4 never reached {point}: {proc.communicate()[1][-3000:]}"
    proc.send_signal(signal.SIGKILL)  # inside the save window: the commit not done
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with open(marker) as f:
        in_flight = f.read()
    # a partial save is on disk (at "arrays" its items are still temporary folders too: params.orbax-checkpoint-tmp)
    assert os.path.isdir(in_flight) and any(name.startswith("params") for name in os.listdir(in_flight))
    assert Checkpointer(run_dir).all_steps() == [2]  # ... but it is not a step

    out = _cli("bsft_jax.train", "--config", cfg)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming {run_dir} from step 2" in out.stderr and "Traceback" not in out.stderr
    assert Checkpointer(run_dir).all_steps() == [4, 6, STEPS]
    _assert_same_weights(_params(run_dir, STEPS), runs["ref_params"])
    metrics = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [m["step"] for m in metrics if m["split"] == "train"][-6:] == [3, 4, 5, 6, 7, 8]  # redone from 3
