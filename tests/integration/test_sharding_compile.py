"""The train step compiled on 8-device meshes in a fresh process (moved from tests/models/test_sharding.py:
the device count is fixed when a process starts JAX)."""

import subprocess
import sys

import pytest

from tests.processes import ROOT, subprocess_env

_COMPILE_ON_MESH = r"""
import sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
from flax import nnx
from bsft_jax.setup.config import default_config
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import Decoder
from bsft_jax.train.optim import make_optimizer
from bsft_jax.models.sharding import make_mesh
from bsft_jax.train.step import Trainer

data, fsdp, tensor = map(int, sys.argv[1:4])
config = DecoderConfig(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True, tie_word_embeddings=True)
mesh = make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor}, jax.devices())
tx, schedule = make_optimizer(default_config().optimizer, 10)
with jax.set_mesh(mesh):
    model = Decoder(config, rngs=nnx.Rngs(0))
    Trainer(model.config, tx, schedule, mesh).compile(8, 32)
print("compiled")
"""


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (2, 4, 1)])
def test_train_step_partitions_without_full_rematerialisation(mesh_shape):
    """The SPMD partitioner finds a plan for every op (the embedding lookup included): XLA warns
    "Involuntary full rematerialization" when it must replicate a tensor to reshard it."""
    env = subprocess_env()
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cached executable would skip the compile that warns
    proc = subprocess.run([sys.executable, "-c", _COMPILE_ON_MESH, *map(str, mesh_shape)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
    assert "Involuntary full rematerialization" not in proc.stderr, proc.stderr[-3000:]
