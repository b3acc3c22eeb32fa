"""The training loop behind ``python -m bsft_jax.train`` (the CLI is :mod:`bsft_jax.train.__main__`).

Run the same command on every host of a TPU slice / GPU cluster (``jax.distributed`` is set up
from the environment, see :mod:`bsft_jax.train.distributed`). A run directory that already holds
checkpoints is resumed from its latest step. SIGTERM (preemption) saves and exits with status 0;
a NaN/inf loss stops with status 1 naming the step, the last good checkpoint untouched.

Library entry point: :func:`run` (takes the :class:`~bsft_jax.setup.settings.Settings` of
:func:`bsft_jax.setup.config.resolve`, or a config it resolves; no flag parsing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from bsft_jax import storage
from bsft_jax.checkpoint.layout import CheckpointError, make_meta
from bsft_jax.checkpoint.lease import take_run_lease
from bsft_jax.checkpoint.lora_base import base_reference, lora_meta, rebuild_base
from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.checkpoint.recovery import newest_meta, restore_newest
from bsft_jax.files import check_writable, write_json
from bsft_jax.models.decoder import count_params
from bsft_jax.models.sharding import make_mesh
from bsft_jax.setup.config import distributed_settings, resolve
from bsft_jax.setup.model_setup import ModelBundle, build_for_resume, build_fresh, check_same_model, write_run_files
from bsft_jax.setup.settings import BehaviorSettings, Settings
from bsft_jax.train import distributed
from bsft_jax.train.data import load_splits, make_eval_batches, train_iterator, truncation_warning
from bsft_jax.train.distributed import data_shard, global_batch_from_local, is_primary
from bsft_jax.train.log import MetricsLogger, Progress, format_duration
from bsft_jax.train.lora import make_trainer
from bsft_jax.train.loss import LossSums, first_target_mask
from bsft_jax.train.optim import make_optimizer
from bsft_jax.train.shared_storage import check_shared_run_dir
from bsft_jax.train.steer import BestKeeper, SteerEval
from bsft_jax.train.step import Trainer, TrainState
from bsft_jax.units import human_bytes

log = logging.getLogger("bsft_jax.train")


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm of a step is NaN or inf."""


@dataclasses.dataclass
class TrainResult:
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
            return multihost_utils.reached_preemption_sync_point(step)
        return self.event.is_set()


# ----------------------------------------------------------------------------- pieces
def held_out_metrics(trainer: Trainer, params: Any, batches: list[dict[str, np.ndarray]], global_batch: int,
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
        "loss": float(s.ce) / tokens, "accuracy": float(s.correct) / tokens,
        "first_token_accuracy": float(s.first_correct) / max(float(s.first_tokens), 1.0),
        "first_tokens": float(s.first_tokens),
        "loss_tokens": float(s.tokens),
    }
    if len(ids):
        counts = distributed.reduce_over_processes(counts, np.sum)
        out["behavior_majority_rate"] = float(counts.max()) / max(float(s.first_tokens), 1.0)
    return out


def _check_finite(step: int, metrics: dict[str, Any], last_saved: int | None) -> None:
    bad = {k: float(metrics[k]) for k in ("loss", "grad_norm") if not math.isfinite(float(metrics[k]))}
    if bad:
        saved = f"the last good checkpoint is step {last_saved}" if last_saved else "no checkpoint was saved yet"
        raise NonFiniteLossError(
            f"non-finite {' and '.join(f'{k}={v}' for k, v in bad.items())} at step {step}; stopping without "
            f"saving this step ({saved}). Lower config.optimizer.learning_rate, check config.optimizer.grad_clip_norm "
            "or inspect the batch of this step.")


def _all_processes_agree(ok: bool) -> bool:
    """True only if ``ok`` on every process (a checkpoint step counts as restored when all read it)."""
    return bool(distributed.reduce_over_processes(np.asarray(int(ok), np.int32), np.min))


def _batch_crc(local: dict[str, np.ndarray]) -> int:
    """Fingerprint of this process's batch (lets tests and users check data order across resumes)."""
    return zlib.crc32(np.ascontiguousarray(local["tokens"]).tobytes())


def _behavior_meta(b: BehaviorSettings, bundle: ModelBundle) -> dict[str, Any]:
    return {"enabled": b.enabled, "names": list(b.spec.names), "token_format": b.spec.token_format,
            "token_ids": dict(bundle.behavior_ids)}


# ----------------------------------------------------------------------------- run
@dataclasses.dataclass
class _Session:
    """What the loop works with, built once by :func:`_start` (set-up, resume, compile)."""

    settings: Settings
    ckpt: Checkpointer
    bundle: ModelBundle
    trainer: Trainer
    state: TrainState
    data_iter: Any
    eval_batches: list[dict[str, np.ndarray]]
    metrics_log: MetricsLogger
    config_dict: dict[str, Any]
    meta_base: dict[str, Any]
    startup: dict[str, Any]
    resume_step: int | None
    steer: SteerEval | None = None
    best: BestKeeper | None = None
    truncated_warned: int = 0  # scenes cut to fit a row, as last warned about (train.data.truncation_warning)


@dataclasses.dataclass
class _Outcome:
    start_step: int
    final_step: int
    preempted: bool
    last_metrics: dict[str, float]
    eval_metrics: dict[str, float]


def run(config: Settings | Any, *, devices: list[jax.Device] | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Trains with the resolved settings; resumes from ``run_dir`` if it holds checkpoints.

    config:   :class:`Settings` from :func:`bsft_jax.setup.config.resolve` (what the CLI passes), or an
              ml_collections config, resolved here for these devices and this job's processes.
    devices:  restrict the mesh to these devices (default: all).
    on_step:  called on every process after each finished step with ``(step, metrics)``.
    Raises ConfigError for a bad config and NonFiniteLossError for a NaN/inf step.
    """
    t_start = time.perf_counter()
    if isinstance(config, Settings):
        settings = config
        distributed.maybe_initialize(settings.distributed)  # before any device query (a no-op if the CLI did it)
    else:
        settings = resolve_for_training(config, None if devices is None else len(devices))
    devices = list(devices if devices is not None else jax.devices())
    mesh = make_mesh(settings.mesh_shape, devices)
    t = settings.train
    run_dir = storage.abspath(settings.run_dir)
    # Every check a user can fail, before anything is written: data (bad lines, empty files), then the run folder.
    splits = load_splits(settings.data, settings.behavior.spec, with_eval=t.eval_every >= 0,
                         num_processes=jax.process_count())
    check_writable(settings.run_dir, "config.run_dir")
    check_writable(storage.join(settings.run_dir, "checkpoints"), "config.run_dir")
    # One trainer per run directory: process 0 holds a lease from before its first write until the end.
    with take_run_lease(settings.run_dir, settings.lease, primary=is_primary(), all_agree=_all_processes_agree), \
            jax.set_mesh(mesh), contextlib.ExitStack() as stack:
        check_shared_run_dir(run_dir)  # multi-host: every process must see one run directory
        session = _start(run_dir, settings, splits, mesh, stack)
        try:
            out = _loop(session, stack.enter_context(_StopSignal()), on_step)
        except jax.errors.JaxRuntimeError:
            distributed.after_collective_error()  # a dead peer: one line and exit 75 from the watchdog
            raise
        session.metrics_log.flush()
    seconds = time.perf_counter() - t_start
    log.info("done: step %d in %s%s", out.final_step, format_duration(seconds), " (preempted)" if out.preempted else "")
    return TrainResult(run_dir=run_dir, start_step=out.start_step, final_step=out.final_step,
                       preempted=out.preempted, last_metrics=out.last_metrics, eval_metrics=out.eval_metrics,
                       startup=session.startup, seconds=seconds)


def resolve_for_training(cfg: Any, num_devices: int | None = None) -> Settings:
    """A training config resolved for this job: ``jax.distributed`` started first (when the config or the
    environment asks for it: the process count is part of the checks), then :func:`resolve`."""
    distributed.maybe_initialize(distributed_settings(cfg))
    return resolve(cfg, num_devices=jax.device_count() if num_devices is None else num_devices,
                   num_processes=jax.process_count())


def _start(run_dir: str, settings: Settings, splits: dict[str, Any], mesh: Any, stack: contextlib.ExitStack
           ) -> _Session:
    """Set-up: the checkpointer, the model (fresh or for resume), the trainer, data, state, compile."""
    primary = is_primary()
    t = settings.train
    c = settings.checkpoint
    ckpt = Checkpointer(run_dir, keep=c.keep, async_save=c.async_save)  # before writing
    stack.callback(ckpt.close)  # waits for pending saves even when a step fails
    newest = newest_meta(ckpt)  # the model config of the run (the same in every step)
    resume_step = None if newest is None else newest[0]
    config_dict = dict(settings.config_json)
    if newest is not None:
        check_same_model(run_dir, config_dict)  # a changed model shape is an error, not silently the old model
    bundle = _bundle(settings, None if newest is None else newest[1], run_dir, resume_step, mesh)
    tx, schedule = make_optimizer(settings.optimizer, t.steps)
    trainer = make_trainer(settings, bundle, tx, schedule, mesh)  # the LoRA trainer when model.lora is on
    shard = data_shard(trainer.batch_sharding, t.global_batch_size)
    data_iter = train_iterator(settings.data, settings.behavior.spec, bundle.tokenizer, shard,
                               splits.get(settings.data.train_split))
    num_params = count_params(bundle.model)
    if resume_step is None:
        state = trainer.init_state(bundle.model, settings.seed)  # takes over (donates) the model's buffers
    else:
        restore_iter = data_iter if c.restore_data else None
        if settings.model.lora.config is not None:
            trainer.set_base(bundle.model)  # the frozen base is the step's argument, not part of the state
        # The newest step that restores; damaged newer ones are set aside as <step>.corrupt.
        state, resume_step = restore_newest(ckpt, trainer.abstract_with_shardings(), data_iterator=restore_iter,
                                            all_agree=_all_processes_agree, primary=primary)
        lora = "LoRA run " if settings.model.lora.config is not None else ""
        log.info("resuming %s%s from step %d", lora, run_dir, resume_step)  # once, with the step that restored
    if primary:  # after the restore: a run that cannot resume leaves its files as they were
        write_run_files(run_dir, bundle, config_dict, fresh=resume_step is None)
    bundle.model = None  # the state owns the parameters now (donated every step)
    trainer.compile(t.global_batch_size, settings.data.seq_len)
    startup = trainer.report(num_params) | {"per_process_batch": shard.rows, "num_processes": jax.process_count()}
    _log_startup(startup)
    if primary:
        write_json(storage.join(run_dir, "startup.json"), startup)
    metrics_log = MetricsLogger(run_dir, enabled=primary, tensorboard=settings.logging.tensorboard)
    stack.callback(metrics_log.close)
    eval_batches = (make_eval_batches(settings.data, settings.behavior.spec, bundle.tokenizer, shard,
                                      splits.get(settings.data.eval_split))
                    if t.eval_every >= 0 else [])
    meta_base = dict(behavior=_behavior_meta(settings.behavior, bundle), num_params=num_params, mesh=startup["mesh"])
    steer = SteerEval(settings, bundle.tokenizer, mesh) if t.steer_eval_items and t.eval_every >= 0 else None
    best = None
    if c.keep_best_metric:
        best = BestKeeper(run_dir, c.keep_best_metric, t.early_stop_patience, primary=primary)
        stack.callback(best.close)
    if settings.model.lora.config is not None:
        meta_base["lora"] = lora_meta(trainer.lora, trainer.row_ids, base_reference(settings, bundle),
                                      str(trainer.base_dtype))
    return _Session(settings, ckpt, bundle, trainer, state, data_iter, eval_batches, metrics_log, config_dict,
                    meta_base, startup, resume_step, steer, best)


def _bundle(settings: Settings, meta: dict[str, Any] | None, run_dir: str, resume_step: int | None, mesh: Any
            ) -> ModelBundle:
    """The run's model: fresh, abstract for a resume, or (LoRA resume) the frozen base rebuilt and checked."""
    if meta is None:
        return build_fresh(settings, mesh)
    if settings.model.lora.config is None:
        return build_for_resume(settings.model, settings.behavior, run_dir, meta)
    if "lora" not in meta:  # the checkpoint has the whole model, not adapters
        raise CheckpointError(f"{run_dir}: step {resume_step} is a full fine-tuning checkpoint but "
                              "model.lora.rank > 0; resume it with model.lora.rank=0")
    return rebuild_base(settings, meta["lora"], mesh, f"{run_dir} step {resume_step}")


def _loop(s: _Session, stop: _StopSignal, on_step: Callable[[int, dict[str, float]], None] | None) -> _Outcome:
    """Steps until ``train.steps`` or SIGTERM: periodic eval, saves, and the final eval."""
    t = s.settings.train
    start_step = int(jax.device_get(s.state.step))
    step, last_saved, preempted = start_step, s.resume_step, False
    last_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    progress = Progress(t.steps, start_step)
    early_stop = False
    for step in range(start_step + 1, t.steps + 1):
        last_metrics = _one_step(s, step, last_saved, progress)
        if on_step is not None:
            on_step(step, last_metrics)
        early_stop = False
        if t.eval_every > 0 and step % t.eval_every == 0 and step != t.steps:
            eval_metrics = _held_out(s, step, "eval")
            early_stop = _track_best(s, step, eval_metrics)
        preempted = stop.should_stop(step)
        if step % s.settings.checkpoint.every_steps == 0 or step == t.steps or preempted or early_stop:
            s.ckpt.save(step, s.state, data_iterator=s.data_iter, config=s.config_dict,
                        meta=make_meta(step, s.bundle.config, **s.meta_base))
            last_saved = step
        if preempted:
            log.warning("SIGTERM: saved step %d, exiting cleanly", step)
            break
        if early_stop:
            break
    if not preempted and not early_stop and t.eval_every >= 0 and (s.eval_batches or s.steer):
        eval_metrics = _held_out(s, step, "final eval")
        _track_best(s, step, eval_metrics)
    return _Outcome(start_step, step, preempted, last_metrics, eval_metrics)


def _one_step(s: _Session, step: int, last_saved: int | None, progress: Progress) -> dict[str, float]:
    """One update on the next batch; logs, checks the loss is finite, writes the metrics line."""
    t = s.settings.train
    local = next(s.data_iter)
    batch = global_batch_from_local(local, s.trainer.batch_sharding, t.global_batch_size)
    s.state, metrics = s.trainer.step(s.state, batch)
    # Reading the metrics waits for the step: a NaN step is never saved or followed.
    out = {k: float(v) for k, v in jax.device_get(metrics).items()}
    _check_finite(step, out, last_saved)
    out["batch_crc"] = _batch_crc(local)
    progress.update(out["input_tokens"])
    if step % t.log_every == 0 or step == t.steps:
        log.info(progress.line(step, out))
        out["tokens_per_second"] = progress.tokens_per_second
        if warning := truncation_warning(getattr(s.data_iter, "stats", None), s.settings.data, s.truncated_warned):
            log.warning(warning)
            s.truncated_warned = int(s.data_iter.stats.truncated)
    s.metrics_log.write(step, out)
    return out


def _held_out(s: _Session, step: int, what: str) -> dict[str, float]:
    metrics = held_out_metrics(s.trainer, s.state.params, s.eval_batches, s.settings.train.global_batch_size,
                               s.bundle.behavior_ids)
    if s.steer is not None:
        metrics |= s.steer(s.trainer.model_graphdef, s.state.params)
    s.metrics_log.write(step, metrics, split="eval")
    log.info("%s at step %d: %s", what, step, _fmt(metrics))
    return metrics


def _track_best(s: _Session, step: int, metrics: dict[str, float]) -> bool:
    """Saves a new best step to RUN_DIR/best (checkpoint.keep_best_metric); True when patience ran out."""
    if s.best is None:
        return False

    def save(ckpt: Checkpointer) -> None:
        meta = make_meta(step, s.bundle.config, **s.meta_base) | {"tokenizer_dir": "../tokenizer"}
        ckpt.save(step, s.state, data_iterator=None, config=s.config_dict, meta=meta)

    return s.best.update(step, metrics, save)


def _fmt(metrics: dict[str, float]) -> str:
    # per-category steering metrics (steer/f1/<category>, ...) go to metrics.jsonl, not the log line
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.count("/") < 2)


def _log_startup(s: dict[str, Any]) -> None:
    mem = s.get("memory_per_device", {})
    log.info("startup: %s parameters | mesh %s (%d devices, %d processes, %d rows/process) | compile %.1fs",
             f"{s['num_params']:,}", s["mesh"], s["num_devices"], s["num_processes"], s["per_process_batch"],
             s["compile_seconds"])
    if mem:
        log.info("compiled train step, memory per device: arguments %s, outputs %s, temporaries %s, aliased %s "
                 "-> total %s", *(human_bytes(mem[k]) for k in (
                     "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
                     "total_bytes_per_device")))
