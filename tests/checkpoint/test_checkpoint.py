"""Checkpoints: crash-and-resume equals an uninterrupted run, NaN stops cleanly, 8 devices -> 1."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.checkpoint.read import load_params
from bsft_jax.train.loop import NonFiniteLossError, run
from tests.train.common import tiny_config


def _one():
    return jax.devices()[:1]


def _train_records(run_dir: str) -> dict[int, dict]:
    """step -> the last 'train' record of metrics.jsonl (a crashed run's unsaved steps are redone)."""
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["split"] == "train":
                out[r["step"]] = r
    return out


class _Crash(RuntimeError):
    pass


def test_crash_and_resume_matches_uninterrupted_run(tmp_path):
    tok = str(tmp_path / "tok")
    steps = 8
    full = tiny_config(str(tmp_path / "full"), tok, **{"train.steps": steps})
    run(full, devices=_one())

    broken = tiny_config(str(tmp_path / "broken"), tok, **{"train.steps": steps})

    def crash(step, _metrics):
        if step == 5:  # checkpoints at 2 and 4: step 5 is lost and must be redone on resume
            raise _Crash

    with pytest.raises(_Crash):
        run(broken, devices=_one(), on_step=crash)
    assert Checkpointer(broken.run_dir).all_steps() == [2, 4]
    resumed = run(broken, devices=_one())
    assert resumed.start_step == 4 and resumed.final_step == steps

    ref, got = _train_records(full.run_dir), _train_records(broken.run_dir)
    assert sorted(got) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        # same data order: the batch fingerprints agree step by step ...
        assert got[step]["batch_crc"] == ref[step]["batch_crc"], step
        # ... and the losses of the resumed steps equal the uninterrupted run's (same device: exact)
        assert got[step]["loss"] == ref[step]["loss"], step
    # the iterator neither repeated nor skipped a batch: all fingerprints distinct and in order
    crcs = [got[s]["batch_crc"] for s in range(1, steps + 1)]
    assert len(set(crcs)) == steps
    assert ref[steps]["loss"] < ref[1]["loss"]


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    # An absurd learning rate makes the weights overflow after the first update: step 2 is NaN.
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"), **{
        "optimizer.learning_rate": 1e25, "optimizer.warmup_steps": 0, "checkpoint.every_steps": 1,
        "checkpoint.async_save": True})
    with pytest.raises(NonFiniteLossError, match="at step 2") as e:
        run(cfg, devices=_one())
    assert "last good checkpoint is step 1" in str(e.value)
    assert Checkpointer(cfg.run_dir).all_steps() == [1]
    model, _, meta = load_params(cfg.run_dir)
    assert meta["step"] == 1
    leaves = jax.tree.leaves(nnx.state(model))
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
