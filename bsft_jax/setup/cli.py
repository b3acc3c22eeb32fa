"""Shared by the absl-flag CLIs (train, plan, evaluate): parse flags, answer --help, name bad flags."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from absl import flags


def flag_error_text(e: BaseException) -> str:
    """ml_collections wraps a KeyError (unknown field) in an AttributeError: show the inner message."""
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    if isinstance(e, KeyError) and e.args:
        return "unknown config field " + str(e.args[0]).replace("\n", "; ")
    text = str(e)
    if "Traceback (most recent call last)" in text:  # ml_collections embeds the config file's traceback: keep its
        head, tb = text.split("Traceback (most recent call last)", 1)  # last line, the exception itself
        text = head.strip().rstrip(":") + ": " + tb.strip().splitlines()[-1]
    return text


def parse_flags(fv: flags.FlagValues, argv: Sequence[str], usage: str,
                positional: list[str] | None = None) -> int | None:
    """Parses ``argv`` into ``fv``. Returns None to go on, or the exit code: 0 after ``--help``
    (usage + every flag printed), 2 after a bad flag or config override (one line on stderr).
    ``positional``, if given, receives the arguments that are not flags (without the program name)."""
    argv = list(argv)
    if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
        print(usage.strip() + "\n")
        print(fv.get_help())
        return 0
    missing = _missing_config_file(argv)
    if missing:
        print(f"error: --config {missing}: no such file (looked in {os.getcwd()}); the recipes are in configs/",
              file=sys.stderr)
        return 2
    try:
        rest = fv(argv)
        if positional is not None:
            positional.extend(rest[1:])
        elif rest[1:]:  # absl keeps what is not a flag: never ignore it silently (a forgotten --config ...)
            print(f"error: {_unexpected(rest[1], fv)}", file=sys.stderr)
            return 2
        if "config" in fv:  # ml_collections defers a config file's load error to first use: surface it here
            _ = fv.config.keys()
    except Exception as e:
        text = flag_error_text(e) or type(e).__name__
        print(f"error: bad command line / config{_config_file_of(argv)}: {text}".replace("\n", "; "), file=sys.stderr)
        return 2
    return None


def _unexpected(arg: str, fv: flags.FlagValues) -> str:
    """The one line for a positional argument a CLI does not take, with the flag it probably meant."""
    if "config" in fv and arg.endswith(".py"):
        hint = f"did you mean --config {arg}?"
    elif arg.startswith("config."):
        hint = f"did you mean --{arg}?"
    else:
        hint = "flags are written --name=value (see --help)"
    return f"unexpected argument {arg!r}; {hint}"


def _missing_config_file(argv: Sequence[str]) -> str | None:
    """The ``--config`` file named in ``argv`` if it does not exist (``FILE:ARG`` allowed), else None."""
    path = _config_file_of(argv)[2:-1]
    if not path or os.path.isfile(path) or os.path.isfile(path.split(":", 1)[0]):
        return None
    return path


def _config_file_of(argv: Sequence[str]) -> str:
    """`` (FILE)`` for the ``--config`` file named in ``argv``, so the error line names it."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return f" ({a.split('=', 1)[1]})"
        if a == "--config" and i + 1 < len(argv):
            return f" ({argv[i + 1]})"
    return ""


# Warnings Orbax logs (through absl) every time a reader opens a checkpoint folder read-only, as
# export, evaluate and the recovery code do on purpose: expected, so not shown.
_EXPECTED_WARNINGS = ("CheckpointManagerOptions.read_only=True", "Given directory is read only=")


def _unexpected_record(record: logging.LogRecord) -> bool:
    return not (record.levelno <= logging.WARNING and str(record.msg).startswith(_EXPECTED_WARNINGS))


def setup_logging() -> None:
    """INFO logs with timestamps; quiets absl, Orbax's read-only notices and JAX's "no TPU found" on CPU/GPU hosts."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S", force=True)
    absl_log = logging.getLogger("absl")
    absl_log.setLevel(logging.WARNING)
    if _unexpected_record not in absl_log.filters:
        absl_log.addFilter(_unexpected_record)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
