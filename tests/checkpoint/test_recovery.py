"""The fallback rules of checkpoint/recovery.py, with stand-in loaders (no training): what is tried, what is set
aside."""

from __future__ import annotations

import logging
import os
import sys
import types

import pytest

from bsft_jax.checkpoint.layout import CheckpointError
from bsft_jax.checkpoint.recovery import failure_reason, newest_that_loads, restore_newest, set_aside
from bsft_jax.setup.config import ConfigError


def _loader(bad: dict[int, BaseException]):
    tried = []

    def load(step):
        tried.append(step)
        if step in bad:
            raise bad[step]
        return f"state@{step}"

    return load, tried


def test_falls_back_newest_first_and_reports_each_newer_failure(caplog):
    load, tried = _loader({6: Exception("Encountered error while reading array index: (slice(0, 2, 1),). "
                                         "See full TensorStore details: <a very long spec>"),
                           4: OSError("truncated")})
    with caplog.at_level(logging.WARNING):
        step, value, failures = newest_that_loads([2, 4, 6], load, what="restore", where="RUN/checkpoints")
    assert (step, value) == (2, "state@2") and tried == [6, 4, 2]
    assert failures == [(6, "Encountered error while reading array index: (slice(0, 2, 1),)."), (4, "truncated")]
    assert "RUN/checkpoints: step 6 restore failed" in caplog.text


def test_user_errors_stop_the_search_untouched():
    load, tried = _loader({6: CheckpointError("saved by 2 processes"), 4: ConfigError("config.x: bad")})
    with pytest.raises(CheckpointError, match="saved by 2 processes"):
        newest_that_loads([4, 6], load, what="restore", where="d")
    assert tried == [6]  # a user error is not damage: no older step is tried


def test_nothing_restores_names_every_step():
    load, _ = _loader({2: ValueError("shape mismatch"), 4: ValueError("shape mismatch")})
    with pytest.raises(CheckpointError, match=r"^d: no checkpoint step can be restored \(step 4: shape mismatch; "
                                              r"step 2: shape mismatch\); nothing was set aside$"):
        newest_that_loads([2, 4], load, what="restore", where="d", hint="; nothing was set aside")


def test_a_step_counts_only_when_every_process_restored_it():
    load, _ = _loader({})
    votes = iter([False, True])  # another process failed step 4, all agree on step 2
    step, _, failures = newest_that_loads([2, 4], load, what="restore", where="d", all_agree=lambda ok: next(votes))
    assert step == 2 and failures == [(4, "another process could not restore it")]


def test_set_aside_renames_and_never_overwrites(tmp_path):
    for name in ("6", "6.corrupt"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    moved = set_aside(str(tmp_path), 6)
    assert moved == str(tmp_path / "6.corrupt.2") and (tmp_path / "6.corrupt.2" / "f").read_text() == "6"
    assert (tmp_path / "6.corrupt" / "f").read_text() == "6.corrupt" and not (tmp_path / "6").exists()


def test_failure_reason_is_the_innermost_cause():
    cause = 'OUT_OF_RANGE: Error reading "embed/0.0" in OCDBT database at local file "x/6/params/"'
    try:
        try:
            raise ValueError(cause)
        except ValueError as inner:
            raise Exception("Encountered error while reading array index: (slice(0, 2, 1),). See full "
                            "TensorStore details: <spec>") from inner
    except Exception as e:
        assert failure_reason(e) == cause
    try:
        try:
            raise ValueError(cause)
        except ValueError:
            raise Exception("params: cannot restore") from None  # a deliberate summary: kept
    except Exception as e:
        assert failure_reason(e) == "params: cannot restore"
    try:
        try:
            raise RuntimeError('Traceback (most recent call last):\n  File "pool.py", line 1\nValueError: x')
        except RuntimeError as remote:  # what concurrent.futures attaches as the cause of a worker's error
            raise ValueError(cause) from remote
    except ValueError as e:
        assert failure_reason(e) == cause  # never a traceback in the one-line reason


def test_failure_reason_is_one_short_line():
    assert failure_reason(Exception("a\n  b " + "x" * 500), limit=20) == "a b xxxxxxxxxxxxxxxx ..."
    assert failure_reason(KeyError()) == "KeyError"


class _FakeCheckpointer:
    """The part of Checkpointer that restore_newest uses, over real step folders; ``bad`` steps fail to restore."""

    def __init__(self, directory, steps, bad):
        self.directory, self.bad, self.reloads = str(directory), set(bad), 0
        for s in steps:
            (directory / str(s)).mkdir()
        self.manager = self

    def all_steps(self):
        return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

    def read_json(self, step, item):
        return {"step": step}

    def restore(self, step, abstract, data_iterator=None):
        if step in self.bad:
            raise ValueError(f"tensorstore: step {step} truncated")
        return f"state@{step}"

    def reload(self):
        self.reloads += 1


def test_restore_newest_sets_aside_only_newer_failed_steps(tmp_path):
    ckpt = _FakeCheckpointer(tmp_path, [2, 4, 6, 8], bad={6, 8})
    state, step = restore_newest(ckpt, abstract_state=None)
    assert (state, step) == ("state@4", 4)
    assert sorted(os.listdir(tmp_path)) == ["2", "4", "6.corrupt", "8.corrupt"] and ckpt.reloads == 1


def test_restore_newest_moves_nothing_when_no_step_restores(tmp_path):
    ckpt = _FakeCheckpointer(tmp_path, [2, 4], bad={2, 4})
    with pytest.raises(CheckpointError, match="step 4: tensorstore: step 4 truncated; step 2: .*nothing was set aside"):
        restore_newest(ckpt, abstract_state=None)
    assert sorted(os.listdir(tmp_path)) == ["2", "4"]


def test_other_processes_do_not_rename(tmp_path):
    ckpt = _FakeCheckpointer(tmp_path, [2, 4], bad={4})
    assert restore_newest(ckpt, abstract_state=None, primary=False)[1] == 2
    assert sorted(os.listdir(tmp_path)) == ["2", "4"]  # process 0 renames; this one only reloads



@types.coroutine
def _suspend():
    yield


async def _sibling_read():
    try:
        await _suspend()
    finally:  # closed when collected: raises, as Orbax's abandoned array reads do
        raise ValueError("OUT_OF_RANGE reading layers.post_attn_norm.scale")


def test_abandoned_sibling_reads_do_not_print_tracebacks(monkeypatch):
    printed = []  # what Python would print as "Exception ignored in: <coroutine ...>" + traceback
    monkeypatch.setattr(sys, "unraisablehook", printed.append)

    def load(step):
        sibling = _sibling_read()
        sibling.send(None)  # started, then abandoned when the first read fails
        raise Exception("Encountered error while reading array index") from ValueError("OUT_OF_RANGE reading embed")

    with pytest.raises(CheckpointError, match=r"step 2: OUT_OF_RANGE reading embed\)"):
        newest_that_loads([2], load, what="restore", where="d")
    assert printed == []


def test_reports_of_abandoned_reads_are_dropped_and_nothing_else(monkeypatch, caplog):
    """After a failed step: asyncio's never-retrieved records, TensorStore's closed-loop tracebacks and
    Orbax read coroutines collected late (both unraisable) go to the debug log; anything else still shows."""
    import asyncio

    from bsft_jax.checkpoint import recovery

    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    shown = []
    monkeypatch.setattr(sys, "unraisablehook", shown.append)
    monkeypatch.setattr(recovery, "_failed", False)
    recovery.quiet_abandoned_reads()
    recovery.quiet_abandoned_reads()  # idempotent: one filter, one hook
    assert len(logging.getLogger("asyncio").filters) == 1

    def unraisable(exc, obj=None):
        sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
                                                 err_msg=None, object=obj))

    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(lambda: None)  # what TensorStore's thread does once Orbax closed the loop
    except RuntimeError as e:
        unraisable(e)
    other = RuntimeError("Event loop is closed")  # same text, raised elsewhere: a real problem, shown
    unraisable(other)
    coroutines = {}  # an Orbax read coroutine collected late is dropped; any other coroutine still reports
    for name, filename in (("orbax", "/site-packages/orbax/checkpoint/_src/serialization/x.py"), ("ours", "/a/b.py")):
        namespace = {}
        exec(compile("async def read():\n    pass\n", filename, "exec"), namespace)
        coroutines[name] = namespace["read"]()
    for coro in coroutines.values():
        unraisable(ValueError("read failed"), coro)
        coro.close()
    assert [(u.exc_value, u.object) for u in shown] == [(other, None), (shown[1].exc_value, coroutines["ours"])]

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        asyncio_log = logging.getLogger("asyncio")
        asyncio_log.error("Task exception was never retrieved\nfuture: <Task finished exception=ValueError('x')>")
        asyncio_log.error("Future exception was never retrieved\nfuture: <Future finished exception=ValueError()>")
        asyncio_log.error("Exception in callback something()")
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == ["Exception in callback something()"]


def test_every_meta_unreadable_says_what_to_do():
    from bsft_jax.checkpoint.recovery import newest_meta

    class Ckpt:
        directory = "RUN/checkpoints"

        def all_steps(self):
            return [2, 4]

        def read_json(self, step, item):
            raise ValueError("Expecting value: line 1 column 1 (char 0)")

    with pytest.raises(CheckpointError, match=r"no checkpoint step can be restored \(step 4: Expecting value.*; "
                                              r"nothing was set aside\. If the files are damaged, move the "
                                              r"checkpoints/ folder away"):
        newest_meta(Ckpt())
