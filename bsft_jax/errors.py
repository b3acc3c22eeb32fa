"""The one line between a user's mistake and a bug: :class:`UserError` and the CLI boundary.

Every error a user can cause with their input (a config field, a data file, a run directory, a
checkpoint step, an HF folder, a launcher argument) derives from :class:`UserError`:
``ConfigError``, ``DataError``, ``CheckpointError``, ``ExportError``, ``PlanError`` ... Each
command-line entry point runs its work through :func:`cli_boundary`, which prints such an error as
one line ``error: ...`` on stderr and returns exit status 2. Anything else is a bug and keeps its
traceback (exit 1). Pure Python, no JAX: the launchers import it too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

USER_ERROR_EXIT = 2


class UserError(Exception):
    """An error caused by the user's input; its message says what is wrong, where, and what to do."""


class PathError(UserError, OSError):
    """A path the user named cannot be written: read-only, or a file where a folder is needed (or under one)."""


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (newlines become ``; ``), or its type name when empty."""
    text = str(e).strip() or type(e).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def first_failure(e: BaseException) -> UserError | None:
    """The earliest :class:`UserError` that ``e`` was raised while handling, if any.

    A run that fails (a checkpoint save) often fails again while it stops (uploading the metrics to the
    same broken bucket): the first failure is the one to report. An error raised *from* another (an
    explicit translation) or with its context suppressed does not count.
    """
    found, x = None, e
    for _ in range(20):
        if x.__cause__ is not None:  # raised from it: the same failure, translated
            x = x.__cause__
        elif x.__context__ is not None and not x.__suppress_context__:  # raised while handling it
            x = x.__context__
            if isinstance(x, UserError):
                found = x
        else:
            break
    return found


def report(e: BaseException, stream: TextIO | None = None) -> int:
    """Prints ``error: <message>`` on one line to ``stream`` (stderr); returns the user-error exit status.

    When ``e`` happened while stopping after an earlier user error, that one is named first.
    """
    first = first_failure(e)
    text = one_line(e) if first is None else f"{one_line(first)} (then, while stopping: {one_line(e)})"
    print(f"error: {text}", file=stream or sys.stderr, flush=True)
    return USER_ERROR_EXIT


def cli_boundary(fn: Callable[[], int | None]) -> int:
    """Runs a CLI's work: its return value (None: 0), or 2 after one ``error:`` line for a :class:`UserError`.

    Any other exception propagates with its traceback: that is a bug to report, not bad input.
    """
    try:
        code = fn()
    except UserError as e:
        return report(e)
    return 0 if code is None else int(code)
