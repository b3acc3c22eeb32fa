"""One JAX persistent compilation cache for a test session: the pytest process and every child it starts.

Most tests build a fresh :class:`~bsft_jax.train.step.Trainer` (or sampler, or model) for the same tiny
configuration, and a fresh ``jax.jit`` object compiles again even when its program is one an earlier test
compiled. With the cache on, the second compile of a program is a read from disk: an 8-step run of
tests/train/common.tiny_config costs about 2 CPU seconds instead of 13-17 (measured in one process,
issue 27). The key is the program itself (HLO, devices, JAX/XLA versions and flags), so a hit runs the
executable the compile would have built.

The folder is made per session and removed at its end. A folder already named by
``$JAX_COMPILATION_CACHE_DIR`` is used as it is and kept (pytest-xdist's workers inherit their
controller's; a developer may point it at a lasting folder to reuse compiles across sessions).
``BSFT_TEST_NO_JAX_CACHE=1`` turns the cache off, to measure what it saves.
"""

from __future__ import annotations

import os
import shutil
import tempfile

NO_CACHE_VAR = "BSFT_TEST_NO_JAX_CACHE"
MIN_COMPILE_SECONDS = 0.0  # every program: the tests' are small, and each one compiles again in the next test
# A size limit turns on JAX's file lock around cache reads and writes: processes sharing the folder
# (children side by side, xdist workers) then never read an entry another one is still writing.
MAX_BYTES = 4 * 2**30
_ENV = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(MIN_COMPILE_SECONDS),
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(MAX_BYTES),
}


def start() -> tuple[str | None, bool]:
    """Points this process's JAX and every child's (through ``os.environ``) at the session's cache folder.

    Returns (folder, whether this call made it and so :func:`stop` removes it); (None, False) when
    turned off. Call it before this process compiles anything: JAX sets its cache up at the first compile.
    """
    if os.environ.get(NO_CACHE_VAR) == "1":
        return None, False
    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    made = not folder
    if made:
        folder = tempfile.mkdtemp(prefix="bsft_jax_test_cc_")
    os.environ.update({k: os.environ.get(k, v) for k, v in _ENV.items()}, JAX_COMPILATION_CACHE_DIR=folder)

    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))
    return folder, made


def stop(folder: str | None, made: bool) -> None:
    """Takes the variables :func:`start` set out of ``os.environ``; removes the folder if it made it."""
    if folder and made:
        for name in ("JAX_COMPILATION_CACHE_DIR", *_ENV):
            os.environ.pop(name, None)
        shutil.rmtree(folder, ignore_errors=True)
