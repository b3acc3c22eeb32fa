"""Export of a checkpoint written by two processes (launch/local.py, jax.distributed on loopback).

Each process writes its own shards (``params/ocdbt.process_{0,1}``); the single-process export must
gather them into exactly the tensors that ``load_params`` + ``save_hf``'s conversion produce (bitwise).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from bsft_jax.checkpoint.read import load_params, read_meta
from bsft_jax.export import export_checkpoint
from bsft_jax.models.hf import iter_hf_tensors
from bsft_jax.models.safetensors_io import iter_tensors
from tests.processes import ROOT, subprocess_env, write_config


def test_export_of_a_two_process_checkpoint_gathers_every_shard(tmp_path):
    config = write_config(tmp_path, **{"train.steps": 2, "checkpoint.every_steps": 2})
    env = subprocess_env()
    env.pop("JAX_NUM_CPU_DEVICES", None)
    out = subprocess.run([sys.executable, "launch/local.py", "--num_processes", "2", "--devices_per_process", "2",
                          "--timeout", "300", "--", "--config", config, "--config.mesh.fsdp=2", "--config.mesh.data=2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=360)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    run_dir = str(tmp_path / "run")
    assert read_meta(run_dir)["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    params_dir = os.path.join(run_dir, "checkpoints", "2", "params")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(params_dir))

    hf_dir = export_checkpoint(run_dir, str(tmp_path / "hf"), dtype="float32")
    model, config, _ = load_params(run_dir)
    expected = {t.name: t.produce() for t in iter_hf_tensors(model, config, "float32")}
    got = {}
    for name in os.listdir(hf_dir):
        if name.endswith(".safetensors"):
            got.update(iter_tensors(os.path.join(hf_dir, name)))
    assert set(got) == set(expected)
    for name, arr in expected.items():
        np.testing.assert_array_equal(got[name], arr, err_msg=name)
