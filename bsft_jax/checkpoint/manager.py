"""The Orbax manager of a training run's checkpoints: state, data-iterator position, config and export metadata.

The run-directory layout and the ``meta`` item: :mod:`bsft_jax.checkpoint.layout`; reading a step for
evaluation and export (which step, its meta, the parameters as a Decoder): :mod:`bsft_jax.checkpoint.read`.

A step directory only appears once complete (Orbax writes to a temporary name and renames), a
NaN/inf step is never saved, and a checkpoint restores onto any mesh: restore targets are
abstract arrays carrying the new mesh's shardings (:meth:`Checkpointer.restore`,
:meth:`Checkpointer.restore_params`).

A save that fails for good (a full disk, a bucket still failing after the retries of
:mod:`bsft_jax.storage`) raises :class:`CheckpointError`: one line naming the folder, the step and the
last complete step, which a failed save never touches (the run resumes from it).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import re
from collections.abc import Iterator
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from bsft_jax import storage
from bsft_jax.checkpoint.layout import CHECKPOINT_SUBDIR, CheckpointError, checkpoint_dir
from bsft_jax.errors import one_line

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- pure-dict helpers
def _to_pure(state: Any) -> Any:
    return nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state


def _fill(template: nnx.State, pure: Any) -> nnx.State:
    """A new nnx.State shaped like ``template`` holding the arrays of ``pure`` (a plain template: ``pure``)."""
    if not isinstance(template, nnx.State):
        return pure
    state = jax.tree.map(lambda x: x, template)
    nnx.replace_by_pure_dict(state, pure)
    return state


# ----------------------------------------------------------------------------- manager
class Checkpointer:
    """Saves and restores a run's checkpoints under ``RUN_DIR/checkpoints`` (see module docstring)."""

    _pending: int | None = None  # the step of the asynchronous save still being written
    _last_good: int | None = None  # the newest step known complete
    _failed = False  # a failed save was reported already

    def __init__(self, run_dir: str, *, keep: int = 3, async_save: bool = True):
        self.directory = checkpoint_dir(run_dir)
        if storage.is_url(self.directory):
            _bound_tensorstore_retries()
        options = ocp.CheckpointManagerOptions(max_to_keep=int(keep), enable_async_checkpointing=bool(async_save),
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._async = bool(async_save)
        self._last_good = self.manager.latest_step()

    def latest_step(self) -> int | None:
        """The newest complete step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every complete step on disk, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, *, data_iterator: Any, config: dict[str, Any],
             meta: dict[str, Any]) -> None:
        """Starts saving ``state`` (a TrainState) at ``step``; returns once device arrays are copied.

        ``data_iterator``: a Grain DatasetIterator (or None); its position after the batches of
        steps ``1..step`` is stored per process.
        """
        items: dict[str, Any] = {
            "params": ocp.args.StandardSave(_to_pure(state.params)),
            "opt_state": ocp.args.StandardSave(_to_pure(state.opt_state)),
            "train": ocp.args.StandardSave({"step": state.step, "rng": state.rng}),
            "config": ocp.args.JsonSave(config),
            "meta": ocp.args.JsonSave(meta),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._finish_pending()  # Orbax waits for the previous save anyway: its failure is reported here
        try:
            self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)
        except Exception as e:
            self._raise_failure(e, int(step))
        if self._async:
            self._pending = int(step)
        else:
            self._last_good = int(step)

    def _finish_pending(self) -> None:
        """Waits for the asynchronous save in flight; raises :class:`CheckpointError` if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            step, self._pending = self._pending, None
            if self._failed:  # the same failure, reported once already
                log.debug("after a failed save: %s", one_line(e))
                return
            self._raise_failure(e, step)
        if self._pending is not None:
            self._last_good, self._pending = self._pending, None

    def _raise_failure(self, e: Exception, step: int | None) -> None:
        """Raises the one-line :class:`CheckpointError` for a save that failed for good, or ``e`` (a bug)."""
        error = self._failure(e, step)
        if error is e:
            raise e
        raise error from e

    def _failure(self, e: BaseException, step: int | None) -> BaseException:
        """The one-line :class:`CheckpointError` for a save that failed for good, or ``e`` itself (a bug)."""
        kept = (f"step {self._last_good} is intact and a rerun resumes from it" if self._last_good is not None
                else "no earlier step was saved")
        what = "a checkpoint" if step is None else f"step {step}"
        if any(_no_space(x) for x in _chain(e)):
            self._failed = True
            return CheckpointError(f"no space left on the device of {self.directory} while saving {what}; {kept}. "
                                   "Free space there, lower config.checkpoint.keep or point config.run_dir at a "
                                   "larger disk")
        if any(_storage_failure(x, storage.is_url(self.directory)) for x in _chain(e)):
            self._failed = True
            return CheckpointError(f"saving {what} to {self.directory} failed: {one_line(e)[:400]}; {kept}. "
                                   "Check the bucket or disk, then rerun to resume")
        return e

    def restore(self, step: int, abstract_state: Any, *, data_iterator: Any = None) -> Any:
        """Restores a TrainState onto the shardings carried by ``abstract_state`` (any mesh).

        ``abstract_state``: a TrainState of ShapeDtypeStructs with ``sharding`` set
        (``Trainer.abstract_with_shardings()``). ``data_iterator`` is moved to the saved position.
        """
        items: dict[str, Any] = {
            "params": ocp.args.StandardRestore(_to_pure(abstract_state.params)),
            "opt_state": ocp.args.StandardRestore(_to_pure(abstract_state.opt_state)),
            "train": ocp.args.StandardRestore({"step": abstract_state.step, "rng": abstract_state.rng}),
        }
        if data_iterator is not None:
            self._check_data_processes(step)
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(int(step), args=ocp.args.Composite(**items))
        return dataclasses.replace(
            abstract_state,
            params=_fill(abstract_state.params, restored["params"]),
            opt_state=_fill(abstract_state.opt_state, restored["opt_state"]),
            step=restored["train"]["step"],
            rng=restored["train"]["rng"],
        )

    def _check_data_processes(self, step: int) -> None:
        """The data position is per process: restoring it needs the process count it was saved with."""
        folder = storage.join(self.directory, str(step), "data")
        files = [f for f in storage.listdir(folder) if f.endswith(".json")] if storage.isdir(folder) else []
        if not files:
            raise CheckpointError(f"{folder}: no data-iterator state; set --config.checkpoint.restore_data=false "
                                  "to restart the data order instead")
        saved = {f.rsplit("-of-", 1)[-1].removesuffix(".json") for f in files}
        if saved != {str(jax.process_count())}:
            raise CheckpointError(
                f"{folder}: the data position was saved by {sorted(saved)} process(es) but this run has "
                f"{jax.process_count()}; resume with the same number of processes, or set "
                "--config.checkpoint.restore_data=false to keep the weights and optimizer state and restart "
                "the data order")

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the parameters of ``step``, onto the shardings carried by ``abstract_params`` (abstract arrays)."""
        restored = self.manager.restore(int(step), args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_to_pure(abstract_params))))
        return _fill(abstract_params, restored["params"])

    def read_json(self, step: int, item: str) -> dict[str, Any]:
        """The ``config`` or ``meta`` item of a step."""
        return self.manager.restore(int(step), args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item]

    def close(self) -> None:
        """Waits for pending saves and releases the manager; a failed save raises :class:`CheckpointError`."""
        try:
            if hasattr(self, "_async"):  # a writer (readers are built by open_read_only)
                self._finish_pending()
            else:
                self.manager.wait_until_finished()
        finally:
            self.manager.close()


# tensorstore names the outcome of a failed request first: "UNAVAILABLE: ...", "RESOURCE_EXHAUSTED: ..."
_TS_STATUS = re.compile(r"^(UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAUTHENTICATED|"
                        r"INTERNAL|UNKNOWN|ABORTED|DATA_LOSS|FAILED_PRECONDITION|NOT_FOUND): ")


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    for _ in range(10):
        if e is None:
            return
        yield e
        e = e.__cause__ or e.__context__


def _no_space(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "Disk quota exceeded" in text


def _storage_failure(e: BaseException, remote: bool) -> bool:
    """Whether ``e`` is the storage failing (rather than a bug): a transient fault left after the retries,
    a tensorstore status, or, for a bucket, any OS-level error of its client."""
    if isinstance(e, storage.StorageError) or storage.is_transient(e) or _TS_STATUS.match(str(e)):
        return True
    return remote and isinstance(e, OSError)


def _bound_tensorstore_retries() -> None:
    """Applies ``$BSFT_STORAGE_RETRY_SECONDS`` to tensorstore's retries of checkpoint arrays on a bucket.

    Orbax 0.12 builds every tensorstore context from module defaults and offers no option for it, so the
    retry resource is added to those defaults (unset: tensorstore's own 32 retries, about 15 min).
    """
    bound = storage.tensorstore_retry_context()
    if bound is None:
        return
    try:  # a private Orbax module: another Orbax version may not have it
        from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

        for context in (ts_utils._BASE_TS_CONTEXT, ts_utils._DEFAULT_OCDBT_TS_CONTEXT):
            context["gcs_request_retries"] = dict(bound)
    except (ImportError, AttributeError):  # another Orbax: keep its defaults
        log.warning("cannot bound tensorstore's retries on this Orbax version; it keeps its own")


# ----------------------------------------------------------------------------- readers (export / eval)
def open_read_only(run_dir: str) -> Checkpointer:
    """A Checkpointer that only reads ``run_dir``'s steps (it creates nothing and waits for no save)."""
    directory = checkpoint_dir(run_dir)
    if not storage.isdir(directory):
        raise CheckpointError(f"{run_dir}: no {CHECKPOINT_SUBDIR}/ folder (is this a bsft_jax run directory?)")
    ckpt = Checkpointer.__new__(Checkpointer)
    ckpt.directory = directory
    ckpt.manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True,
                                                                                          create=False))
    return ckpt
