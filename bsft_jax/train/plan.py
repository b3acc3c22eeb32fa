"""Memory planner: per-device bytes of a training recipe on a target mesh, without loading weights.

    python -m bsft_jax.train --config configs/qwen2_5_7b_behaviorsft.py --plan --plan_target=v5p-64
    python -m bsft_jax.train --config configs/qwen2_5_7b_behaviorsft.py --plan \\
        --mesh=data=1,fsdp=-1,tensor=4 --plan_devices=32 [--config.train.microbatches=4 ...]

Nothing is allocated: the model and the AdamW state are ``jax.eval_shape``-d (abstract arrays),
sharded by the rules table over a mesh of *compile-only* devices, and the real train step
(:class:`bsft_jax.train.step.Trainer`, the same function ``python -m bsft_jax.train`` runs) is lowered
with abstract inputs and compiled. Two kinds of figures come out, and the report says which is which:

* **analytic** (exact): parameters, optimizer state, gradients and the batch per device, from the
  shapes, dtypes and shardings (``bytes = prod(shard shape) x itemsize``).
* **XLA** (``compiled.memory_analysis()`` of the compiled step): arguments, outputs, donated
  (aliased) bytes and temporaries; the temporaries hold the activations kept for the backward
  pass, the gradients, gathered FSDP weights and the logits. Peak = arguments + outputs -
  aliased + temporaries.

Which compiler: for a TPU target with ``libtpu`` importable (always on a TPU VM; elsewhere ``pip
install libtpu==0.0.42.1``, the version jax 0.10.2 pins) the step is compiled by the TPU compiler
for the slice's topology (deviceless AOT, as MaxText's train_compile does): the figure is what
that TPU would allocate, up to runtime overheads. Otherwise it is compiled by XLA's CPU backend
over ``N`` fake CPU devices: its sharding and buffer sizes are right, but CPU fusion, layout and
scheduling differ from TPU/GPU (measured here: the CPU temporaries are 0.9-1.6x the TPU
compiler's for the shipped recipes, the planner table in docs/training.md), so take CPU figures as a
conservative estimate. GPU targets always get the CPU estimate (the CUDA compiler is not used here).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from bsft_jax.errors import cli_boundary
from bsft_jax.files import check_writable
from bsft_jax.models.decoder import abstract_decoder, count_params
from bsft_jax.models.sharding import make_mesh, resolve_mesh_shape
from bsft_jax.setup.cli import parse_flags
from bsft_jax.setup.config import config_from_dict, config_to_dict
from bsft_jax.setup.settings import Settings, TrainSettings
from bsft_jax.train.lora import LoraTrainer
from bsft_jax.train.optim import make_optimizer
from bsft_jax.train.plan_model import PRESET_TOKENIZER_SIZES as PRESET_TOKENIZER_SIZES
from bsft_jax.train.plan_model import guess_preset as guess_preset
from bsft_jax.train.plan_model import model_config_for_plan
from bsft_jax.train.plan_report import format_plan
from bsft_jax.train.plan_targets import (
    TARGETS,
    PlanError,
    Target,
    backends_initialized,
    cpu_devices,
    parse_bytes,
    parse_mesh,
    target_by_name,
    tpu_compiler_available,
    tpu_devices,
)
from bsft_jax.train.step import Trainer, memory_per_device

log = logging.getLogger("bsft_jax.train.plan")


# ----------------------------------------------------------------------------- checks
def resolve_plan_mesh(train: TrainSettings, mesh: dict[str, int], num_devices: int) -> dict[str, int]:
    """The mesh sizes with ``-1`` resolved, and the batch divisibility the trainer requires."""
    try:
        sizes = resolve_mesh_shape(mesh, num_devices)
    except ValueError as e:
        raise PlanError(f"--mesh: {e}") from None
    shards = sizes["data"] * sizes["fsdp"]
    if train.global_batch_size % (train.microbatches * shards):
        raise PlanError(f"config.train.global_batch_size={train.global_batch_size} is not divisible by "
                        f"train.microbatches x (data x fsdp) = {train.microbatches} x {shards}: every device needs "
                        "whole rows; lower microbatches, raise the batch, or move devices to --mesh tensor=")
    return sizes


# ----------------------------------------------------------------------------- figures
def _shard_bytes(abstract: Any, shardings: Any) -> int:
    total = 0
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings), strict=True):
        total += math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
    return int(total)


def analytic_bytes(trainer: Any, global_batch: int, seq_len: int) -> dict[str, int]:
    """Exact per-device bytes of the state and the batch, from shapes, dtypes and shardings."""
    st, sh = trainer.abstract_state, trainer.state_shardings
    params = _shard_bytes(st.params, sh.params)
    shards = trainer.batch_sharding.mesh.shape["data"] * trainer.batch_sharding.mesh.shape["fsdp"]
    out = {
        "params": params,
        "opt_state": _shard_bytes(st.opt_state, sh.opt_state),
        # Gradients have the parameters' shapes, dtype and shardings; with microbatches > 1 the
        # step holds the accumulator and one microbatch's gradients at once.
        "gradients": params * (2 if trainer.microbatches > 1 else 1),
        "batch": 5 * 4 * global_batch * seq_len // shards,  # 5 int32 [B, T] arrays (BATCH_KEYS)
    }
    if hasattr(trainer, "abstract_frozen"):  # LoRA: params/opt_state/gradients are the adapters + rows only
        out["frozen_base"] = _shard_bytes(trainer.abstract_frozen, trainer.frozen_shardings)
    c = trainer.config
    rows = global_batch // trainer.microbatches // shards
    act_bytes = 2 if c.dtype in ("bfloat16", "float16") else 4
    tensor = trainer.batch_sharding.mesh.shape["tensor"]
    vocab_local = c.vocab_size // tensor if c.vocab_size % tensor == 0 else c.vocab_size
    # Lower bounds for one microbatch: with remat="full" the backward pass keeps each layer's input
    # [rows, T, D]; the fp32 logits [rows, T, V/tensor] exist at least once (plus their gradient).
    out["layer_inputs_kept"] = c.num_layers * rows * seq_len * c.hidden_size * act_bytes
    out["logits_fp32"] = rows * seq_len * vocab_local * 4
    return out


def compile_step(settings: Settings, config: Any, devices: list[Any],
                 mesh_sizes: dict[str, int]) -> tuple[Any, Any, float]:
    """The trainer's step compiled for abstract inputs on ``devices``: ``(trainer, compiled, seconds)``."""
    mesh = make_mesh(mesh_sizes, devices)
    t = settings.train
    tx, schedule = make_optimizer(settings.optimizer, t.steps)
    lora = settings.model.lora
    with jax.set_mesh(mesh):
        if lora.config is not None:  # the LoRA step: frozen base (optionally in the compute dtype), no AdamW for it
            n = len(settings.behavior.spec.names) if settings.behavior.enabled else 0
            rows = range(config.num_valid_tokens - n, config.num_valid_tokens)
            trainer = LoraTrainer(config, tx, schedule, mesh, lora=lora.config, behavior_ids=list(rows),
                                  base_dtype=lora.base_dtype or None, step=t.step)
        else:
            trainer = Trainer(config, tx, schedule, mesh, t.step)
        t0 = time.perf_counter()
        try:
            compiled = trainer.compile(t.global_batch_size, settings.data.seq_len)
        except Exception as e:  # the TPU compiler's "Ran out of memory in memory space hbm": a result, not a bug
            oom = compile_out_of_memory(e)
            if oom is None:
                raise
            raise CompileOutOfMemory(trainer, *oom, str(e).strip().splitlines()[0][:300]) from e
    return trainer, compiled, time.perf_counter() - t0


class CompileOutOfMemory(Exception):
    """The compiler refused the step for want of device memory (the TPU compiler checks its HBM)."""

    def __init__(self, trainer: Any, temp: int, available: int, message: str):
        super().__init__(message)
        self.trainer, self.temp, self.available = trainer, temp, available


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_OOM = re.compile(r"RESOURCE_EXHAUSTED.*?required for HLO temporaries \(([\d.]+)([KMGT]?)\)"
                  r".*?available HBM \(([\d.]+)([KMGT]?)\)", re.S)


def compile_out_of_memory(error: BaseException) -> tuple[int, int] | None:
    """(temporaries needed, HBM available) in bytes when ``error`` is the compiler's out-of-HBM refusal."""
    m = _OOM.search(str(error))
    if m is None:
        return None
    return round(float(m[1]) * _UNITS[m[2]]), round(float(m[3]) * _UNITS[m[4]])


def xla_bytes(compiled: Any) -> dict[str, int]:
    """``memory_analysis()`` of a compiled step, with the peak estimate the trainer also logs."""
    mem = memory_per_device(compiled.memory_analysis())
    out = {f.removesuffix("_size_in_bytes"): v for f, v in mem.items() if f.endswith("_size_in_bytes")}
    out["peak"] = mem["total_bytes_per_device"]
    return out


# ----------------------------------------------------------------------------- plan
def plan_memory(cfg: Any, *, mesh: dict[str, int] | None = None, num_devices: int | None = None,
                target: str | Target | None = None, compiler: str = "auto", hbm_bytes: int | None = None,
                model_preset: str | None = None) -> dict[str, Any]:
    """Per-device memory of ``cfg``'s train step on a target; returns a JSON-ready dict.

    mesh:         sizes (one may be -1); default: ``config.mesh``.
    num_devices:  devices of the target (default: the target's, else this process's device count).
    target:       a :data:`TARGETS` name or Target (memory per device, TPU topology).
    compiler:     "tpu" (deviceless TPU AOT, needs libtpu and a TPU target), "cpu" (N fake CPU
                  devices; a subprocess is started when this process has fewer), or "auto".
    hbm_bytes:    memory per device to check the peak against (default: the target's).
    model_preset: architecture preset when the HF folder is not here (default: guessed from its name).
    """
    settings = Settings.from_config(cfg)  # the typed pieces, resolved (and validated) once
    tgt = target_by_name(target) if isinstance(target, str) else target
    if num_devices is None:
        num_devices = tgt.num_devices if tgt is not None else len(jax.devices())
    if tgt is not None and tgt.num_devices != num_devices:
        raise PlanError(f"--plan_devices={num_devices} disagrees with --plan_target={tgt.name} "
                        f"({tgt.num_devices} devices)")
    mesh_in = dict(mesh or settings.mesh.sizes())
    sizes = resolve_plan_mesh(settings.train, mesh_in, num_devices)
    compiler = _choose_compiler(compiler, tgt)
    devices = _plan_devices(compiler, tgt, num_devices)
    if devices is None:  # this process's backends cannot give those devices: plan in a fresh one
        return _plan_in_subprocess(cfg, mesh_in, num_devices, tgt, compiler, hbm_bytes, model_preset)

    config, how = model_config_for_plan(settings.model, settings.data, settings.behavior, model_preset)
    hbm = hbm_bytes if hbm_bytes is not None else (tgt.hbm_bytes if tgt is not None else None)
    trainer, xla, seconds = _compiled_bytes(settings, config, devices, sizes)
    t, seq_len = settings.train, settings.data.seq_len
    return {
        "target": tgt.name if tgt is not None else None,
        "num_devices": num_devices,
        "device_kind": str(getattr(devices[0], "device_kind", devices[0].platform)),
        "compiler": compiler,
        "mesh": sizes,
        "hbm_bytes_per_device": hbm,
        "model": {"architecture": how, "model_type": config.model_type,
                  "num_params": count_params(abstract_decoder(config)), "vocab_rows": config.vocab_size,
                  "dtype": config.dtype, "param_dtype": config.param_dtype, "remat": config.remat,
                  "lora": trainer.lora.to_dict() if hasattr(trainer, "lora") else None,
                  "trainable_params": trainer.num_trainable() if hasattr(trainer, "lora") else None},
        "batch": {"global_batch_size": t.global_batch_size, "seq_len": seq_len,
                  "microbatches": t.microbatches,
                  "rows_per_device_per_microbatch": t.global_batch_size // t.microbatches
                  // (sizes["data"] * sizes["fsdp"])},
        "analytic": analytic_bytes(trainer, t.global_batch_size, seq_len),
        "xla": xla,
        "compile_seconds": round(seconds, 1),
        "fits": False if xla["peak"] is None else None if hbm is None else bool(xla["peak"] <= hbm),
        "note": tgt.note if tgt is not None else "",
    }


def _compiled_bytes(settings: Settings, config: Any, devices: list[Any], sizes: dict[str, int]
                    ) -> tuple[Any, dict[str, Any], float]:
    """``(trainer, XLA bytes, compile seconds)``; a compiler's out-of-HBM refusal gives no executable,
    so no peak: the temporaries it asked for (``peak`` None, ``out_of_memory`` set) instead."""
    t0 = time.perf_counter()
    try:
        trainer, compiled, seconds = compile_step(settings, config, devices, sizes)
        return trainer, xla_bytes(compiled), seconds
    except CompileOutOfMemory as e:
        xla = {"temp": e.temp, "peak": None, "out_of_memory": {"available": e.available, "message": str(e)}}
        return e.trainer, xla, time.perf_counter() - t0


def _choose_compiler(compiler: str, tgt: Target | None) -> str:
    """"auto" resolved ("tpu" for a TPU target when libtpu is here, else "cpu"), and the choice checked."""
    if compiler == "auto":
        compiler = "tpu" if tgt is not None and tgt.platform == "tpu" and tpu_compiler_available() else "cpu"
    if compiler == "tpu":
        if tgt is None or tgt.platform != "tpu":
            raise PlanError("--plan_compiler=tpu needs a TPU --plan_target (e.g. v5p-64)")
        if not tpu_compiler_available():
            raise PlanError("--plan_compiler=tpu needs libtpu (pip install libtpu==0.0.42.1, the version jax 0.10.2 "
                            "pins); or use --plan_compiler=cpu")
    elif compiler != "cpu":
        raise PlanError(f"--plan_compiler={compiler!r}: expected auto, cpu or tpu")
    return compiler


def _plan_devices(compiler: str, tgt: Target | None, num_devices: int) -> list[Any] | None:
    """The devices the step is compiled for, or None when this process's backends cannot give them."""
    if compiler == "tpu":
        return tpu_devices(tgt) if not backends_initialized() or _tpu_backend_known() else None
    return cpu_devices(num_devices)


def _tpu_backend_known() -> bool:
    with contextlib.suppress(Exception):
        jax.devices("tpu")
        return True
    return False


def _plan_in_subprocess(cfg: Any, mesh: dict[str, int], num_devices: int, tgt: Target | None, compiler: str,
                        hbm_bytes: int | None, model_preset: str | None) -> dict[str, Any]:
    """Runs :func:`plan_memory` in a fresh process that can create ``num_devices`` devices."""
    request = {"config": config_to_dict(cfg), "mesh": mesh, "num_devices": num_devices,
               "target": tgt.name if tgt is not None else None, "compiler": compiler, "hbm_bytes": hbm_bytes,
               "model_preset": model_preset}
    with tempfile.TemporaryDirectory(prefix="bsft_plan_") as tmp:
        req, res = os.path.join(tmp, "request.json"), os.path.join(tmp, "result.json")
        with open(req, "w") as f:
            json.dump(request, f)
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env.pop("JAX_NUM_CPU_DEVICES", None)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        out = subprocess.run([sys.executable, "-m", "bsft_jax.train.plan", "--worker", req, res], env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise PlanError(f"planner subprocess failed (exit {out.returncode}): {out.stderr[-3000:]}")
        with open(res) as f:
            return json.load(f)


def _worker(request_path: str, result_path: str) -> int:
    with open(request_path) as f:
        req = json.load(f)
    plan = plan_memory(config_from_dict(req["config"]), mesh=req["mesh"], num_devices=req["num_devices"],
                       target=req["target"], compiler=req["compiler"], hbm_bytes=req["hbm_bytes"],
                       model_preset=req["model_preset"])
    with open(result_path, "w") as f:
        json.dump(plan, f)
    return 0


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m bsft_jax.train --config FILE --plan [--mesh=...] [--plan_target=...|--plan_devices=N]``."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) >= 2 and argv[1] == "--worker":
        return _worker(argv[2], argv[3])
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", "configs/demo.py", "ml_collections config file", flag_values=fv)
    flags.DEFINE_bool("plan", True, "report per-device memory of the train step; train nothing", flag_values=fv)
    flags.DEFINE_string("mesh", "", "mesh sizes, e.g. data=1,fsdp=-1,tensor=4 (default: config.mesh)", flag_values=fv)
    flags.DEFINE_integer("plan_devices", 0, "number of devices (chips / GPUs) of the target", flag_values=fv)
    flags.DEFINE_string("plan_target", "", f"a known slice: {', '.join(TARGETS)}", flag_values=fv)
    flags.DEFINE_enum("plan_compiler", "auto", ["auto", "cpu", "tpu"], "which XLA compiler measures the step",
                      flag_values=fv)
    flags.DEFINE_string("plan_hbm", "", "memory per device to check against, e.g. 16GiB", flag_values=fv)
    flags.DEFINE_string("plan_model", "", "architecture preset when the HF folder is absent (e.g. qwen2_5_7b)",
                        flag_values=fv)
    flags.DEFINE_string("plan_json", "", "also write the plan as JSON to this file", flag_values=fv)
    code = parse_flags(fv, argv, main.__doc__ or "")
    if code is not None:
        return code
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s] %(message)s", force=True)

    def plan_and_print() -> None:
        if fv.plan_devices < 0:
            raise PlanError(f"--plan_devices={fv.plan_devices}: must be a positive number of devices (0: the target's)")
        try:
            hbm = parse_bytes(fv.plan_hbm) if fv.plan_hbm else None
        except PlanError as e:
            raise PlanError(f"--plan_hbm={fv.plan_hbm!r}: {e}") from None
        check_writable(fv.plan_json, "--plan_json", folder=False)  # before minutes of compiling, not after
        plan = plan_memory(fv.config, mesh=parse_mesh(fv.mesh) if fv.mesh else None,
                           num_devices=fv.plan_devices or None, target=fv.plan_target or None,
                           compiler=fv.plan_compiler, hbm_bytes=hbm, model_preset=fv.plan_model or None)
        config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
        if config_path is None and "--config" in argv:
            config_path = argv[argv.index("--config") + 1]
        print(format_plan(plan, config_path or ""))
        if fv.plan_json:
            with open(fv.plan_json, "w") as f:
                json.dump(plan, f, indent=2)

    return cli_boundary(plan_and_print)  # PlanError, ConfigError: one line, exit 2


if __name__ == "__main__":
    sys.exit(main())
