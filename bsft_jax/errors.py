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


def report(e: BaseException, stream: TextIO | None = None) -> int:
    """Prints ``error: <message>`` on one line to ``stream`` (stderr); returns the user-error exit status."""
    print(f"error: {one_line(e)}", file=stream or sys.stderr, flush=True)
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
