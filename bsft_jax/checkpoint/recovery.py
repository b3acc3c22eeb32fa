"""A damaged checkpoint step never blocks a resume or an export: try the newest, fall back, set it aside.

Orbax writes a step under a temporary name and renames it when complete, so an interrupted save
(kill -9, preemption, a full disk) never looks like a step. What that does not cover is damage
after the commit: a truncated or zeroed file from a failing disk or a partial copy. Restoring
such a step raises deep inside TensorStore. Here, the trainer tries the steps newest first; each
step newer than the first one that restores is *set aside*: renamed to ``<step>.corrupt`` (never
deleted; rename it back to retry it), with a warning naming the step and the reason. Readers
(export, evaluation) fall back the same way but change nothing on disk.

Nothing is set aside unless an older step restores: if every step fails the same way, the cause
is more likely the code or the config than the disk, and the error names each step's reason.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from bsft_jax import storage
from bsft_jax.checkpoint.layout import CheckpointError, checkpoint_dir
from bsft_jax.checkpoint.read import resolve_step, steps_on_disk
from bsft_jax.errors import UserError

log = logging.getLogger(__name__)

CORRUPT_SUFFIX = ".corrupt"
T = TypeVar("T")


_NOTHING_RESTORES = ("; nothing was set aside. If the files are damaged, move the checkpoints/ folder away to "
                     "start over; if the code or the model/optimizer config changed since, use the ones the run "
                     "was saved with")


class DamagedStep(Exception):
    """Raised by a step loader for a step whose files are damaged (not a user error: fall back)."""


def failure_reason(e: BaseException, limit: int = 300) -> str:
    """A short one-line reason for a failed restore: the innermost cause, which names the file and byte range.

    (Orbax's own message is "Encountered error while reading array index ..." followed by kilobytes
    of TensorStore spec; TensorStore's error underneath says what is wrong where.)
    """
    while (inner := _cause(e)) is not None and _is_message(inner):
        e = inner
    text = str(e).split("Traceback (most recent call last)")[0]  # never a traceback in the one line
    text = " ".join(text.split(" See full TensorStore details")[0].split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def _cause(e: BaseException) -> BaseException | None:
    """What ``e`` was raised from, as Python prints it (``raise ... from None`` hides the context)."""
    return e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)


def _is_message(e: BaseException) -> bool:
    """A cause worth showing: not empty, and not a worker thread's formatted traceback (_RemoteTraceback)."""
    text = str(e).strip()
    return bool(text) and "Traceback (most recent call last)" not in text


def _try_load(load: Callable[[int], T], step: int) -> tuple[bool, T | None, str]:
    """``(ok, value, reason)``; a :class:`UserError` propagates. The exception is freed on return."""
    try:
        return True, load(step), ""
    except UserError:
        raise
    except Exception as e:  # TensorStore / Orbax / JSON errors: this step's files are damaged
        quiet_abandoned_reads()  # the step's other reads may report after this, from other threads
        return False, None, failure_reason(e)


@contextlib.contextmanager
def _quiet_sibling_reads() -> Iterator[None]:
    """While one step is tried: the other array reads Orbax abandons after the first failure fail too.

    Python reports each one, in four ways, as kilobytes of stderr: "Exception ignored in: <coroutine
    ...>" (unraisable), "RuntimeWarning: coroutine ... was never awaited", asyncio's "Task/Future
    exception was never retrieved" log records, and, from TensorStore's threads once Orbax's event
    loop has closed, a bare "Traceback ... RuntimeError: Event loop is closed" (unraisable, with no
    object: Python then prints no "Exception ignored in" line). The first error is
    the reason we report; the others go to the debug log. Abandoned reads can report after the step
    has been given up (when they finish or are collected), so once a step has failed
    (:func:`_try_load`) the filters of :func:`quiet_abandoned_reads` stay for the rest of the
    process; each drops only that exact report (for coroutines: Orbax's own).
    """
    global _trying
    _install_unraisable_hook()
    _trying += 1
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
            try:
                yield
            finally:
                gc.collect()  # abandoned reads are collected here, under the hook and the filter
    finally:
        _trying -= 1


_trying = 0  # > 0 while a step is tried: every abandoned coroutine's report is dropped
_failed = False  # a step failed: Orbax coroutines collected later are dropped too


def _install_unraisable_hook() -> None:
    if getattr(sys.unraisablehook, "_bsft_quiet", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        obj, exc = unraisable.object, unraisable.exc_value
        if exc is not None and inspect.iscoroutine(obj) and (
                _trying or (_failed and "orbax" in getattr(getattr(obj, "cr_code", None), "co_filename", ""))):
            log.debug("another read of the same step failed too: %s", failure_reason(exc))
        elif (_trying or _failed) and _is_closed_loop_callback(exc, unraisable.exc_traceback):
            log.debug("an abandoned read of a failed step finished after its event loop closed")
        else:
            previous(unraisable)

    hook._bsft_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


_ABANDONED = ("Task exception was never retrieved", "Future exception was never retrieved")


def _not_abandoned_read(record: logging.LogRecord) -> bool:
    """asyncio logger filter: a never-retrieved read error of a failed step goes to the debug log instead."""
    if str(record.msg).startswith(_ABANDONED):
        log.debug("an abandoned read of a failed step failed too: %s",
                  failure_reason(record.exc_info[1]) if record.exc_info and record.exc_info[1] else record.msg)
        return False
    return True


def _is_closed_loop_callback(exc: BaseException | None, tb: Any) -> bool:
    """TensorStore finishing a read for an event loop that Orbax already closed (asyncio's _check_closed)."""
    if type(exc) is not RuntimeError or str(exc) != "Event loop is closed" or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_name == "_check_closed" and "asyncio" in tb.tb_frame.f_code.co_filename


def quiet_abandoned_reads() -> None:
    """Installs (once) the filters for reports that outlive a failed step's restore; see :func:`_quiet_sibling_reads`.

    Only those exact reports are dropped: any other exception or asyncio error still prints.
    """
    global _failed
    _failed = True
    _install_unraisable_hook()
    asyncio_log = logging.getLogger("asyncio")
    if _not_abandoned_read not in asyncio_log.filters:
        asyncio_log.addFilter(_not_abandoned_read)


def set_aside(directory: str, step: int) -> str:
    """Moves ``directory/<step>`` to ``<step>.corrupt`` (``.corrupt.2`` ... if taken); returns the new path.

    ``directory`` may be local or a ``gs://`` prefix.

    Never deletes: the files stay for inspection, and renaming the folder back makes the step
    visible again.
    """
    src = storage.join(directory, str(int(step)))
    dst, n = src + CORRUPT_SUFFIX, 1
    while storage.exists(dst):
        n += 1
        dst = f"{src}{CORRUPT_SUFFIX}.{n}"
    # Locally a rename; GCS has no rename, so there the step's objects are copied server-side and the
    # originals deleted (storage.move). Either way the step stops being an integer-named, visible step.
    storage.move(src, dst)
    return dst


def newest_that_loads(steps: list[int], load: Callable[[int], T], *, what: str, where: str,
                      all_agree: Callable[[bool], bool] = lambda ok: ok, hint: str = ""
                      ) -> tuple[int, T, list[tuple[int, str]]]:
    """Tries ``load(step)`` newest first: ``(step, value, [(newer step, reason), ...])`` of the first that works.

    ``load`` raising a :class:`bsft_jax.errors.UserError` (a problem the user must fix, such as a
    changed process count or a wrong tokenizer) stops the search; any other exception marks that
    step as unreadable.
    ``all_agree(ok)``: True only if every process succeeded (multi-process runs restore together).
    Raises :class:`CheckpointError` naming every step's reason (then ``hint``) when none loads.
    """
    failures: list[tuple[int, str]] = []
    for step in sorted(steps, reverse=True):
        with _quiet_sibling_reads():
            ok, value, reason = _try_load(load, step)
        if all_agree(ok):
            return step, value, failures
        failures.append((step, reason or "another process could not restore it"))
        log.warning("%s: step %d %s failed (%s); trying the previous step", where, step, what, reason)
    if not failures:
        raise CheckpointError(f"{where}: no complete checkpoint step")
    detail = "; ".join(f"step {s}: {r}" for s, r in failures)
    raise CheckpointError(f"{where}: no checkpoint step can be restored ({detail}){hint}")


def restore_newest(ckpt: Any, abstract_state: Any, *, data_iterator: Any = None,
                   all_agree: Callable[[bool], bool] = lambda ok: ok, primary: bool = True) -> tuple[Any, int]:
    """The trainer's resume: ``(state, step)`` of the newest step whose state and ``meta`` restore.

    ``ckpt``: a :class:`bsft_jax.checkpoint.manager.Checkpointer`. Newer steps that fail are set aside
    as ``<step>.corrupt`` (by the primary process) with a warning naming the step and the reason.
    """
    def load(step: int) -> Any:
        ckpt.read_json(step, "meta")
        return ckpt.restore(step, abstract_state, data_iterator=data_iterator)

    step, state, failures = newest_that_loads(ckpt.all_steps(), load, what="restore", where=ckpt.directory,
                                              all_agree=all_agree, hint=_NOTHING_RESTORES)
    for bad, reason in failures:
        if primary:
            moved = set_aside(ckpt.directory, bad)
            log.warning("set aside damaged checkpoint step %d as %s (%s); resuming from step %d",
                        bad, storage.basename(moved), reason, step)
    if failures:
        all_agree(True)  # a collective: every process waits here until the primary has moved the steps
        ckpt.manager.reload()  # forget the steps that were moved away
    return state, step


def newest_meta(ckpt: Any) -> tuple[int, dict[str, Any]] | None:
    """``(step, meta)`` of the newest step whose ``meta`` item reads, or None when the run has no step.

    Only for building the model before :func:`restore_newest` (every step of a run has the same
    model config); sets nothing aside.
    """
    steps = ckpt.all_steps()
    if not steps:
        return None
    step, meta, _ = newest_that_loads(steps, lambda s: ckpt.read_json(s, "meta"), what="meta", where=ckpt.directory,
                                      hint=_NOTHING_RESTORES)
    return step, meta


def newest_readable(run_dir: str, load: Callable[[int], T], step: int | None = None) -> tuple[int, T]:
    """For readers (export, evaluation): ``(step, load(step))``; changes nothing on disk.

    step given: that step, or :class:`CheckpointError` naming it, the reason and the other steps.
    step None:  the newest step that loads, with a warning naming each newer step and its reason.
    """
    ckpt_dir = checkpoint_dir(run_dir)
    if step is not None:
        step = resolve_step(run_dir, step)
        with _quiet_sibling_reads():
            ok, value, reason = _try_load(load, step)
        if ok:
            return step, value
        others = [s for s in steps_on_disk(ckpt_dir) if s != step]
        offer = f"choose another step with --step (available: {others})" if others else "no other step is saved"
        raise CheckpointError(f"{ckpt_dir}/{step}: step {step} cannot be restored ({reason}); {offer}")
    steps = steps_on_disk(ckpt_dir) if storage.isdir(ckpt_dir) else []
    if not steps:
        resolve_step(run_dir)  # raises, naming what is missing

    def checked(s: int) -> T:
        try:
            resolve_step(run_dir, s)  # both items a reader needs are there
        except CheckpointError as e:
            raise DamagedStep(str(e).split(" (readers need")[0]) from None
        return load(s)

    found, value, failures = newest_that_loads(steps, checked, what="restore", where=ckpt_dir)
    if failures:
        log.warning("using step %d of %s: newer step(s) %s cannot be restored; pass --step to choose",
                    found, run_dir, [s for s, _ in failures])
    return found, value
