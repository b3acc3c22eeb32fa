"""Checkpoints: crash-and-resume equals an uninterrupted run, NaN stops cleanly, 8 devices -> 1."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from bsft_jax.checkpoint import Checkpointer, load_params, read_meta
from bsft_jax.train import NonFiniteLossError, run
from bsft_jax.trainer import Trainer

from .common import tiny_config


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


def test_checkpoint_from_8_devices_restores_on_1(tmp_path):
    tok = str(tmp_path / "tok")
    cfg = tiny_config(str(tmp_path / "run"), tok, **{
        "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "train.steps": 2, "checkpoint.every_steps": 2})
    run(cfg)  # all 8 devices
    meta = read_meta(cfg.run_dir)
    assert meta["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and meta["step"] == 2

    ckpt = Checkpointer(cfg.run_dir)
    # restore onto a 1-device mesh and onto the original 8-device mesh: identical values
    from bsft_jax.checkpoint import decoder_config_from_dict
    from bsft_jax.config_schema import default_config
    from bsft_jax.models.decoder import abstract_decoder
    from bsft_jax.optim import make_optimizer
    from bsft_jax.sharding import make_mesh

    config = decoder_config_from_dict(meta["model_config"])
    tx, schedule = make_optimizer(default_config().optimizer, 10)
    restored = {}
    for name, shape, devices in [("one", {"data": 1, "fsdp": 1, "tensor": 1}, _one()),
                                 ("eight", {"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())]:
        mesh = make_mesh(shape, devices)
        with jax.set_mesh(mesh):
            trainer = Trainer(abstract_decoder(config), tx, schedule, mesh)
            state = ckpt.restore(2, trainer.abstract_with_shardings())
        leaf = state.params["layers"]["mlp"]["gate_proj"].get_value()
        assert len(leaf.sharding.device_set) == len(devices)
        restored[name] = jax.device_get((nnx.to_pure_dict(state.params), nnx.to_pure_dict(state.opt_state),
                                         state.step))
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, restored["one"], restored["eight"])
    assert int(restored["one"][2]) == 2

    # the params-only reader (what export / evaluation use) agrees as well
    model, _, _ = load_params(cfg.run_dir)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(nnx.to_pure_dict(nnx.state(model))),
                 restored["one"][0])
