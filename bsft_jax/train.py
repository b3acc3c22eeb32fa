"""``python -m bsft_jax.train --config configs/X.py [--config.field=value ...]``: BehaviorSFT training.

Run the same command on every host of a TPU slice / GPU cluster (``jax.distributed`` is set up
from the environment, see :mod:`bsft_jax.distributed`). A run directory that already holds
checkpoints is resumed from its latest step. SIGTERM (preemption) saves and exits with status 0;
a NaN/inf loss stops with status 1 naming the step, the last good checkpoint untouched.

Library entry point: :func:`run` (takes a resolved ml_collections config; no flag parsing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from bsft_jax import distributed
from bsft_jax.checkpoint import Checkpointer, CheckpointError, make_meta
from bsft_jax.cli import parse_flags, setup_logging
from bsft_jax.config_schema import ConfigError, config_to_dict, validate_config
from bsft_jax.distributed import data_shard, global_batch_from_local, is_primary
from bsft_jax.lora_run import base_reference, lora_from_config, lora_meta, make_trainer, rebuild_base
from bsft_jax.loss import LossSums, first_target_mask
from bsft_jax.model_setup import ModelBundle, build_for_resume, build_fresh, write_run_files
from bsft_jax.models.decoder import count_params
from bsft_jax.optim import make_optimizer
from bsft_jax.sharding import make_mesh
from bsft_jax.train_data import make_eval_batches, make_train_iterator
from bsft_jax.train_log import MetricsLogger, Progress, format_duration
from bsft_jax.trainer import Trainer

log = logging.getLogger("bsft_jax.train")


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm of a step is NaN or inf."""


@dataclasses.dataclass
class RunResult:
    """What :func:`run` did."""

    run_dir: str
    start_step: int  # step the run started from (0, or the resumed checkpoint's step)
    final_step: int  # last completed (and saved) step
    preempted: bool
    last_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    startup: dict[str, Any]
    seconds: float


# ----------------------------------------------------------------------------- preemption
class _StopSignal:
    """SIGTERM -> a flag checked after every step. Multi-process: JAX's preemption sync point."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopSignal:
        # With jax.distributed, JAX's preemption notifier owns SIGTERM and agrees on a step.
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.event.is_set()


# ----------------------------------------------------------------------------- pieces
def evaluate(trainer: Trainer, params: Any, batches: list[dict[str, np.ndarray]], global_batch: int,
             behavior_ids: dict[str, int] | None = None) -> dict[str, float]:
    """Loss, token accuracy and first-target accuracy on held-out batches (teacher forcing).

    In BehaviorSFT the first target of each assistant reply is the behavior token, so
    ``first_token_accuracy`` is the behavior-selection accuracy of greedy decoding;
    ``behavior_majority_rate`` is what always answering the most frequent behavior would score.
    """
    if not batches:
        return {}
    fn = trainer.eval_step_fn()
    total = LossSums.zeros()
    counts = np.zeros(len(behavior_ids or {}), np.int64)
    ids = np.asarray(list((behavior_ids or {}).values()), np.int64)
    for local in batches:
        total = total + fn(params, global_batch_from_local(local, trainer.batch_sharding, global_batch))
        if len(ids):
            first = np.asarray(first_target_mask(local["loss_mask"], local["segment_ids"]))
            counts += (local["targets"][first][:, None] == ids[None, :]).sum(0)
    s = jax.device_get(total)
    tokens = max(float(s.tokens), 1.0)
    out = {
        "loss": float(s.ce) / tokens,
        "accuracy": float(s.correct) / tokens,
        "first_token_accuracy": float(s.first_correct) / max(float(s.first_tokens), 1.0),
        "first_tokens": float(s.first_tokens),
        "loss_tokens": float(s.tokens),
    }
    if len(ids):
        counts = _sum_over_processes(counts)
        out["behavior_majority_rate"] = float(counts.max()) / max(float(s.first_tokens), 1.0)
    return out


def _sum_over_processes(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x)).sum(0)


def _check_finite(step: int, metrics: dict[str, Any], last_saved: int | None) -> None:
    bad = {k: float(metrics[k]) for k in ("loss", "grad_norm") if not math.isfinite(float(metrics[k]))}
    if bad:
        saved = f"the last good checkpoint is step {last_saved}" if last_saved else "no checkpoint was saved yet"
        raise NonFiniteLossError(
            f"non-finite {' and '.join(f'{k}={v}' for k, v in bad.items())} at step {step}; stopping without "
            f"saving this step ({saved}). Lower config.optimizer.learning_rate, check config.optimizer.grad_clip_norm "
            "or inspect the batch of this step.")


def _batch_crc(local: dict[str, np.ndarray]) -> int:
    """Fingerprint of this process's batch (lets tests and users check data order across resumes)."""
    return zlib.crc32(np.ascontiguousarray(local["tokens"]).tobytes())


def _behavior_meta(cfg: Any, bundle: ModelBundle) -> dict[str, Any]:
    b = cfg.behavior
    return {"enabled": bool(b.enabled), "names": list(b.names), "token_format": b.token_format,
            "token_ids": dict(bundle.behavior_ids)}


# ----------------------------------------------------------------------------- run
def run(cfg: Any, *, devices: list[jax.Device] | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None) -> RunResult:
    """Trains with a resolved config; resumes from ``run_dir`` if it holds checkpoints.

    devices:  restrict the mesh to these devices (default: all).
    on_step:  called on every process after each finished step with ``(step, metrics)``.
    Raises ConfigError for a bad config and NonFiniteLossError for a NaN/inf step.
    """
    t_start = time.perf_counter()
    distributed.maybe_initialize(cfg.distributed)
    devices = list(devices if devices is not None else jax.devices())
    mesh_shape = validate_config(cfg, num_devices=len(devices), num_processes=jax.process_count())
    mesh = make_mesh(mesh_shape, devices)
    run_dir = os.path.abspath(cfg.run_dir)
    primary = is_primary()
    config_dict = config_to_dict(cfg)
    t, global_batch = cfg.train, cfg.train.global_batch_size

    with jax.set_mesh(mesh), contextlib.ExitStack() as stack:
        ckpt = Checkpointer(run_dir, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
        stack.callback(ckpt.close)  # waits for pending saves even when a step fails
        resume_step = ckpt.latest_step()
        lora = lora_from_config(cfg)
        if resume_step is None:
            bundle = build_fresh(cfg, mesh)
        elif lora is not None:  # the checkpoint has the adapters only: rebuild (and check) the frozen base
            log.info("resuming LoRA run %s from step %d", run_dir, resume_step)
            resume_meta = ckpt.read_json(resume_step, "meta")
            if "lora" not in resume_meta:
                raise CheckpointError(f"{run_dir}: step {resume_step} is a full fine-tuning checkpoint but "
                                      "model.lora.rank > 0; resume it with model.lora.rank=0")
            bundle = rebuild_base(cfg, resume_meta["lora"], mesh, f"{run_dir} step {resume_step}")
        else:
            log.info("resuming %s from step %d", run_dir, resume_step)
            bundle = build_for_resume(cfg, run_dir, ckpt.read_json(resume_step, "meta"))
        if primary:
            write_run_files(run_dir, bundle, config_dict, fresh=resume_step is None)

        tx, schedule = make_optimizer(cfg.optimizer, t.steps)
        trainer = make_trainer(cfg, bundle, tx, schedule, mesh)
        shard = data_shard(trainer.batch_sharding, global_batch)
        data_iter = make_train_iterator(cfg, bundle.tokenizer, shard)
        num_params = count_params(bundle.model)
        if resume_step is None:
            state = trainer.init_state(bundle.model, cfg.seed)  # takes over (donates) the model's buffers
        else:
            restore_iter = data_iter if cfg.checkpoint.restore_data else None
            if lora is not None:
                trainer.set_base(bundle.model)
            state = ckpt.restore(resume_step, trainer.abstract_with_shardings(), data_iterator=restore_iter)
        bundle.model = None  # the state owns the parameters now (donated every step)
        trainer.compile(global_batch, cfg.data.seq_len)
        startup = trainer.report(num_params)
        startup["per_process_batch"] = shard.rows
        startup["num_processes"] = jax.process_count()
        _log_startup(startup)
        if primary:
            with open(os.path.join(run_dir, "startup.json"), "w") as f:
                json.dump(startup, f, indent=2)
        meta_base = dict(behavior=_behavior_meta(cfg, bundle), num_params=num_params, mesh=startup["mesh"])
        if lora is not None:
            startup["trainable_params"] = trainer.num_trainable()
            meta_base["lora"] = lora_meta(lora, trainer.row_ids, base_reference(cfg, bundle),
                                          str(trainer.base_dtype))
        metrics_log = MetricsLogger(run_dir, enabled=primary, tensorboard=cfg.logging.tensorboard)
        stack.callback(metrics_log.close)
        eval_batches = make_eval_batches(cfg, bundle.tokenizer, shard) if t.eval_every >= 0 else []

        start_step = int(jax.device_get(state.step))
        step, last_saved, preempted = start_step, resume_step, False
        last_metrics: dict[str, float] = {}
        eval_metrics: dict[str, float] = {}
        progress = Progress(t.steps, start_step)
        stop = stack.enter_context(_StopSignal())
        for step in range(start_step + 1, t.steps + 1):
            local = next(data_iter)
            batch = global_batch_from_local(local, trainer.batch_sharding, global_batch)
            state, metrics = trainer.step(state, batch)
            # Reading the metrics waits for the step: a NaN step is never saved or followed.
            last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            _check_finite(step, last_metrics, last_saved)
            last_metrics["batch_crc"] = _batch_crc(local)
            progress.update(last_metrics["input_tokens"])
            if step % t.log_every == 0 or step == t.steps:
                log.info(progress.line(step, last_metrics))
                last_metrics["tokens_per_second"] = progress.tokens_per_second
            metrics_log.write(step, last_metrics)
            if on_step is not None:
                on_step(step, last_metrics)
            if t.eval_every > 0 and step % t.eval_every == 0 and step != t.steps:
                eval_metrics = evaluate(trainer, state.params, eval_batches, global_batch, bundle.behavior_ids)
                metrics_log.write(step, eval_metrics, split="eval")
                log.info("eval at step %d: %s", step, _fmt(eval_metrics))
            preempted = stop.should_stop(step)
            if step % cfg.checkpoint.every_steps == 0 or step == t.steps or preempted:
                ckpt.save(step, state, data_iterator=data_iter, config=config_dict,
                          meta=make_meta(step, bundle.config, **meta_base))
                last_saved = step
            if preempted:
                log.warning("SIGTERM: saved step %d, exiting cleanly", step)
                break
        if not preempted and t.eval_every >= 0 and eval_batches:
            eval_metrics = evaluate(trainer, state.params, eval_batches, global_batch, bundle.behavior_ids)
            metrics_log.write(step, eval_metrics, split="eval")
            log.info("final eval at step %d: %s", step, _fmt(eval_metrics))
        metrics_log.flush()
    seconds = time.perf_counter() - t_start
    log.info("done: step %d in %s%s", step, format_duration(seconds), " (preempted)" if preempted else "")
    return RunResult(run_dir=run_dir, start_step=start_step, final_step=step, preempted=preempted,
                     last_metrics=last_metrics, eval_metrics=eval_metrics, startup=startup, seconds=seconds)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _log_startup(s: dict[str, Any]) -> None:
    mem = s.get("memory_per_device", {})
    log.info("startup: %s parameters | mesh %s (%d devices, %d processes, %d rows/process) | compile %.1fs",
             f"{s['num_params']:,}", s["mesh"], s["num_devices"], s["num_processes"], s["per_process_batch"],
             s["compile_seconds"])
    if mem:
        log.info("compiled train step, memory per device: arguments %s, outputs %s, temporaries %s, aliased %s "
                 "-> total %s", *(_human_bytes(mem[k]) for k in (
                     "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
                     "total_bytes_per_device")))


# ----------------------------------------------------------------------------- CLI
_USAGE = """python -m bsft_jax.train --config configs/X.py [--config.section.field=value ...]
       python -m bsft_jax.train --config configs/X.py --plan [--mesh=data=1,fsdp=-1,tensor=4] [--plan_target=v5p-64]

Trains (or resumes, if config.run_dir has checkpoints) the recipe in the config file; --plan reports
per-device memory of the train step on a target mesh instead. Every config field can be overridden."""


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: parses absl flags (``--config``), runs, maps errors to exit codes."""
    if "--plan" in (sys.argv if argv is None else argv)[1:]:  # memory planner: compiles the step, trains nothing
        from bsft_jax import plan

        return plan.main(argv)
    from absl import flags
    from ml_collections import config_flags

    flags_def = flags.FlagValues()
    config_flags.DEFINE_config_file("config", "configs/demo.py", "ml_collections config file", flag_values=flags_def)
    code = parse_flags(flags_def, sys.argv if argv is None else argv, _USAGE)
    if code is not None:
        return code
    setup_logging()
    try:
        distributed.maybe_initialize(flags_def.config.distributed)
        if not is_primary():  # one progress log per job: the other processes report only problems
            logging.getLogger().setLevel(logging.WARNING)
        result = run(flags_def.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    log.info("finished at step %d%s", result.final_step, " (preempted)" if result.preempted else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
