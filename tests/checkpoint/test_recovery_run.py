"""Checkpoint damage no check can see, in-process (moved from tests/integration/test_recovery_cli.py, whose
other cases go through the real CLIs): a flipped byte in array data restores without an error."""

from __future__ import annotations

import glob
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from bsft_jax.checkpoint.read import load_params
from bsft_jax.train.loop import run
from tests.train.common import tiny_config

STEPS = 8  # checkpoints every 2 steps, keep 3 (as in tests/integration/test_recovery_cli.py)


def _params(run_dir: str, step: int) -> list[np.ndarray]:
    model, _, meta = load_params(run_dir, step)
    assert meta["step"] == step
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory):
    """An uninterrupted run (the reference run of tests/integration/test_recovery_cli.py)."""
    base = tmp_path_factory.mktemp("recovery")
    ref = tiny_config(str(base / "ref"), str(base / "tok"), **{"train.steps": STEPS})
    run(ref, devices=jax.devices()[:1])
    return {"ref": ref.run_dir, "ref_params": _params(ref.run_dir, STEPS)}


def test_a_flipped_byte_in_array_data_restores_silently(ref_run, tmp_path):
    """The 'not detected' row of docs/reliability.md: Orbax/TensorStore keep no checksum over array data, so one byte
    flipped in the middle of a params data file (after the commit) restores without error, with wrong
    values (how many depends on where it lands in the compressed stream). The count is printed (pytest -s)."""
    run_dir = str(tmp_path / "flipped")
    shutil.copytree(ref_run["ref"], run_dir)
    files = glob.glob(os.path.join(run_dir, "checkpoints", str(STEPS), "params", "**", "d", "*"), recursive=True)
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    got = _params(run_dir, STEPS)  # no error
    wrong = sum(int((a != b).sum()) for a, b in zip(got, ref_run["ref_params"], strict=True))
    total = sum(a.size for a in got)
    print(f"one flipped byte: {wrong} of {total} values wrong, no error")
    assert 0 < wrong < total, wrong
