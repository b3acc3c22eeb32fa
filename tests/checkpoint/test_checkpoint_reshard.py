"""Checkpoints across meshes (8 devices -> 1) and across process counts (the data position)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from bsft_jax.checkpoint.layout import CheckpointError
from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.checkpoint.read import load_params, read_meta
from bsft_jax.train.loop import run
from bsft_jax.train.step import Trainer
from tests.train.common import tiny_config


def _one():
    return jax.devices()[:1]


def test_checkpoint_from_8_devices_restores_on_1(tmp_path):
    tok = str(tmp_path / "tok")
    cfg = tiny_config(str(tmp_path / "run"), tok, **{
        "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "train.steps": 2, "checkpoint.every_steps": 2})
    run(cfg)  # all 8 devices
    meta = read_meta(cfg.run_dir)
    assert meta["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and meta["step"] == 2

    ckpt = Checkpointer(cfg.run_dir)
    # restore onto a 1-device mesh and onto the original 8-device mesh: identical values
    from bsft_jax.checkpoint.layout import decoder_config_from_dict
    from bsft_jax.models.sharding import make_mesh
    from bsft_jax.setup.config import default_config
    from bsft_jax.train.optim import make_optimizer

    config = decoder_config_from_dict(meta["model_config"])
    tx, schedule = make_optimizer(default_config().optimizer, 10)
    restored = {}
    for name, shape, devices in [("one", {"data": 1, "fsdp": 1, "tensor": 1}, _one()),
                                 ("eight", {"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())]:
        mesh = make_mesh(shape, devices)
        with jax.set_mesh(mesh):
            trainer = Trainer(config, tx, schedule, mesh)
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

    # and a training run resumes from it on one device: the data position carries over as well
    cfg.mesh.update(data=1, fsdp=1, tensor=1)
    cfg.train.steps = 3
    resumed = run(cfg, devices=_one())
    assert resumed.start_step == 2 and resumed.final_step == 3


def test_data_position_needs_the_same_process_count(tmp_path):
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"), **{"train.steps": 2})
    run(cfg, devices=_one())
    data = tmp_path / "run" / "checkpoints" / "2" / "data"
    (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")  # as if saved by 2 processes
    cfg.train.steps = 3
    with pytest.raises(CheckpointError, match=r"saved by \['2'\] process\(es\) but this run has 1"):
        run(cfg, devices=_one())
    cfg.checkpoint.restore_data = False  # the escape hatch: weights and optimizer state only
    assert run(cfg, devices=_one()).final_step == 3
