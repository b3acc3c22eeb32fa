"""Run a CLI's ``main([...])`` in this process as ``python -m MODULE ARGS`` would run it, and read its exit
status, stdout and stderr (with ``capsys``): the user-error contract (one line, exit 2, no traceback)
checked without starting an interpreter. Used by tests/train/test_cli_errors.py and
tests/train/test_lease_run.py; the console boundary itself is proved by real processes in
tests/integration/test_cli_boundary.py.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback

import jax

from tests.train.cli_cases import ROOT

# What the CLIs' set-up changes in this process (logging.basicConfig(force=True), quieter loggers; export
# selects the CPU platform): saved before each call and put back after it.
_LOGGERS = ("", "absl", "jax._src.xla_bridge", "orbax")
_DEVICE_COUNT = jax.device_count


@contextlib.contextmanager
def _cli_state(argv: list[str]):
    """The process ``python ARGV`` would be, for the length of one call: run from the repository folder,
    ``sys.argv`` = the command line (ml_collections reads ``--config.*`` overrides from ``sys.argv``, not
    from ``main``'s argument), and one CPU device, as the subprocess cases ran (JAX_NUM_CPU_DEVICES=1)."""
    saved = [(log, log.level, list(log.handlers), list(log.filters)) for log in map(logging.getLogger, _LOGGERS)]
    platforms = jax.config.jax_platforms
    devices, saved_argv = jax.devices, sys.argv
    one = devices()[:1]
    jax.devices, jax.device_count, sys.argv = (lambda *a, **k: list(one)), (lambda *a, **k: 1), [argv[1], *argv[2:]]
    try:
        with contextlib.chdir(ROOT):
            yield
    finally:
        jax.devices, sys.argv = devices, saved_argv
        jax.device_count = _DEVICE_COUNT
        for log, level, handlers, filters in saved:
            for handler in log.handlers:
                if handler not in handlers:
                    handler.close()
            log.handlers[:], log.filters[:] = handlers, filters
            log.setLevel(level)
        jax.config.update("jax_platforms", platforms)


def _main(module: str):
    """The function ``python -m MODULE ARGS`` calls, as ``f(ARGS)``."""
    if module == "bsft_jax.train":
        from bsft_jax.train.__main__ import main

        return lambda args: main([module, *args])
    if module == "bsft_jax.evaluate":
        from bsft_jax.evaluate.__main__ import main

        return lambda args: main([module, *args])
    if module == "bsft_jax.export":
        from bsft_jax.export import main

        return main
    raise ValueError(module)


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``python ARGV`` (``["-m", MODULE, ...]``) run as a call of its ``main``;
    an exception that escapes ``main`` is exit 1 with its traceback on stderr, as the interpreter would have it."""
    assert argv[0] == "-m", argv
    capsys.readouterr()
    tb = ""
    with _cli_state(argv):
        try:
            code = _main(argv[1])(argv[2:])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except Exception:
            code, tb = 1, traceback.format_exc()
    out, err = capsys.readouterr()
    return code, out, err + tb
