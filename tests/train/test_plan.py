"""The memory planner: exact analytic figures, the same compiled step as training, no weights for a 7B plan.

The analytic per-device bytes are compared with the shard sizes of a real, allocated train state on
the same mesh (exact), and the XLA figures with the startup report of a real run (the same
executable, so exact as well). The planner's subprocesses (more devices than this process has, the
7B plan's peak RSS) are tested in tests/integration/test_plan_cli.py.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from bsft_jax.models.sharding import make_mesh
from bsft_jax.setup.model_setup import build_fresh
from bsft_jax.setup.settings import Settings
from bsft_jax.train.loop import run
from bsft_jax.train.optim import make_optimizer
from bsft_jax.train.plan import (
    PlanError,
    format_plan,
    guess_preset,
    model_config_for_plan,
    parse_bytes,
    parse_mesh,
    plan_memory,
    target_by_name,
    tpu_compiler_available,
)
from bsft_jax.train.step import Trainer
from tests.train.common import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH = {"data": 1, "fsdp": 4, "tensor": 2}


def _shard_bytes(tree) -> int:
    """Bytes one device holds of every array in ``tree`` (from the real allocated shards)."""
    return int(sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree)))


def test_small_plan_equals_real_state_shards_and_the_real_compiled_step(tmp_path):
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"), **{
        "mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2, "train.microbatches": 2, "train.steps": 2,
        "checkpoint.every_steps": 2})
    plan = plan_memory(cfg, num_devices=8, compiler="cpu")
    assert plan["mesh"] == MESH and plan["compiler"] == "cpu"
    a, x = plan["analytic"], plan["xla"]

    # analytic == what one device really holds of a freshly built, sharded train state
    mesh = make_mesh(MESH)
    with jax.set_mesh(mesh):
        bundle = build_fresh(Settings.from_config(cfg), mesh)
        tx, schedule = make_optimizer(cfg.optimizer, cfg.train.steps)
        trainer = Trainer(bundle.config, tx, schedule, mesh, microbatches=2)
        state = trainer.init_state(bundle.model, cfg.seed)
    assert a["params"] == _shard_bytes(state.params)
    assert a["opt_state"] == _shard_bytes(state.opt_state)
    assert a["gradients"] == 2 * a["params"]  # accumulator + one microbatch's gradients
    # every matrix is split 8 ways (fsdp x tensor); only norm scales and biases are partly replicated
    total = sum(np.prod(p.shape) * 4 for p in jax.tree.leaves(state.params))
    assert total / 8 <= a["params"] < total / 4
    # the compiled step's arguments are exactly the state and the batch (+ step int32 and rng uint32[2])
    assert x["argument"] == a["params"] + a["opt_state"] + a["batch"] + 4 + 8
    assert x["peak"] == x["argument"] + x["output"] - x["alias"] + x["temp"]

    # the trainer's own startup report of a real run on the same mesh: the same executable
    result = run(cfg)
    mem = result.startup["memory_per_device"]
    assert (x["argument"], x["output"], x["alias"], x["temp"]) == (
        mem["argument_size_in_bytes"], mem["output_size_in_bytes"], mem["alias_size_in_bytes"],
        mem["temp_size_in_bytes"])
    assert plan["model"]["num_params"] == result.startup["num_params"]
    text = format_plan(plan, "tiny")
    assert "analytic" in text and "XLA CPU compiler" in text and "peak" in text


def test_plan_errors_name_the_problem(tmp_path):
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"))
    with pytest.raises(PlanError, match=r"--mesh: \(data=3, fsdp=-1, tensor=1\) does not divide"):
        plan_memory(cfg, mesh={"data": 3, "fsdp": -1, "tensor": 1}, num_devices=8)
    with pytest.raises(PlanError, match="global_batch_size=8 is not divisible by train.microbatches x"):
        plan_memory(cfg, mesh={"data": 1, "fsdp": -1, "tensor": 1}, num_devices=16)
    with pytest.raises(PlanError, match="unknown; known targets: v4-8"):
        target_by_name("v9-1")
    with pytest.raises(PlanError, match="expected e.g."):
        parse_mesh("fsdp:4")


def test_architecture_from_presets_and_behavior_vocabulary_growth():
    from bsft_jax.setup.config import load_config_file

    assert guess_preset("/models/Qwen2.5-7B-Instruct") == "qwen2_5_7b"
    assert guess_preset("Llama-3.1-8B-Instruct/") == "llama3_1_8b"
    assert target_by_name("v5litepod-64").num_devices == 64 and target_by_name("v5p-64").num_devices == 32
    assert target_by_name("v4-32").num_devices == 16 and target_by_name("h100x8").platform == "gpu"
    qwen = load_config_file(os.path.join(ROOT, "configs", "qwen2_5_7b_behaviorsft.py"), "qwen2_5_7b_behaviorsft.py")
    qwen.model.hf_path = "/nonexistent/Qwen2.5-7B-Instruct"
    s = Settings.from_config(qwen)
    config, how = model_config_for_plan(s.model, s.data, s.behavior)
    assert "preset qwen2_5_7b" in how and config.vocab_size == 152_064  # 151,665 + 3 fit the spare rows
    assert config.remat == "full" and config.dtype == "bfloat16" and config.param_dtype == "float32"
    llama = load_config_file(os.path.join(ROOT, "configs", "llama3_1_8b_behaviorsft.py"), "llama3_1_8b_behaviorsft.py")
    llama.model.hf_path = "/nonexistent/Llama-3.1-8B-Instruct"
    s = Settings.from_config(llama)
    config, _ = model_config_for_plan(s.model, s.data, s.behavior)
    assert config.vocab_size == 128_384 and config.valid_vocab_size == 128_259  # padded to a multiple of 128


@pytest.mark.skipif(not tpu_compiler_available(), reason="libtpu not installed (pip install libtpu==0.0.42.1)")
def test_tpu_compiler_plan_for_a_small_slice(tmp_path):
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"))
    plan = plan_memory(cfg, mesh=parse_mesh("fsdp=-1"), target="v5e-8", compiler="tpu")
    assert plan["compiler"] == "tpu" and "TPU" in plan["device_kind"] and plan["num_devices"] == 8
    assert plan["xla"]["argument"] >= plan["analytic"]["params"] + plan["analytic"]["opt_state"]


def test_the_compilers_out_of_memory_refusal_is_a_plan_that_does_not_fit(tmp_path, monkeypatch):
    from bench.tables import _plan_peak
    from bsft_jax.train import plan as plan_mod

    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(39.61G) exceeds available HBM (30.75G).")
    assert plan_mod.compile_out_of_memory(RuntimeError(message)) == (round(39.61 * 2**30), round(30.75 * 2**30))
    assert plan_mod.compile_out_of_memory(RuntimeError("INTERNAL: something else")) is None

    def refuse(self, *args, **kwargs):
        raise RuntimeError(message + "\nmore detail")

    monkeypatch.setattr(Trainer, "compile", refuse)
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"))
    plan = plan_memory(cfg, num_devices=1, compiler="cpu", hbm_bytes=parse_bytes("32GiB"))
    assert plan["fits"] is False and plan["xla"]["peak"] is None
    assert plan["xla"]["temp"] == round(39.61 * 2**30) and plan["analytic"]["params"] > 0
    text = format_plan(plan, "tiny")
    assert "refused after" in text and "does NOT fit: the compiler needs 39.61 GiB of temporaries alone" in text
    assert _plan_peak(plan["xla"]) == "out of HBM" and _plan_peak(None) == "-"

    monkeypatch.setattr(Trainer, "compile", lambda self, *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # any other compile error stays a traceback
        plan_memory(cfg, num_devices=1, compiler="cpu")
