"""Helpers that start processes: for the slow tiers only (tests/integration, tests/multihost, tests/realweights).

A test outside those folders must not import this module (tests/test_tiers.py checks it). Every
subprocess of the suite shares one JAX persistent compilation cache for the session (see
:func:`start_compilation_cache`), so a program one child compiled is read back by the next one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Set to 1 to run the subprocesses without the shared cache (to measure what it saves).
NO_CACHE_VAR = "BSFT_TEST_NO_JAX_CACHE"
_CACHE_ENV = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # every program: the children's are small
    # A size limit turns on JAX's file lock around cache reads and writes: children running side by side
    # (multi-process tests) then never read an entry another one is still writing (a warning on stderr).
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(4 * 2**30),
}


def start_compilation_cache() -> str | None:
    """Points every subprocess the session starts at one fresh JAX compilation cache folder; returns it.

    Set in ``os.environ``, so children inherit it whichever helper (or test file) builds their
    environment. The pytest process itself is not affected: JAX read its configuration from the
    environment when tests/conftest.py imported it, before this runs. Every compile is cached
    (``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0``): the children's programs are tiny.
    """
    if os.environ.get(NO_CACHE_VAR) == "1" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None  # opted out, or the caller already chose a cache folder
    folder = tempfile.mkdtemp(prefix="bsft_jax_test_cc_")
    os.environ.update(_CACHE_ENV, JAX_COMPILATION_CACHE_DIR=folder)
    return folder


def stop_compilation_cache(folder: str | None) -> None:
    if folder:
        for name in ("JAX_COMPILATION_CACHE_DIR", *_CACHE_ENV):
            os.environ.pop(name, None)
        shutil.rmtree(folder, ignore_errors=True)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a test's child process: this one's (so the session's compilation cache),
    the repository on PYTHONPATH (``tests.*`` config files import from it), and ``extra``."""
    return dict(os.environ, PYTHONPATH=ROOT, **extra)


def write_config(tmp_path, body: str = "", **overrides) -> str:
    """A config file for the CLI built on tests/train/common.tiny_config."""
    path = tmp_path / "cfg.py"
    path.write_text(
        "from tests.train.common import tiny_config\n\n"
        "def get_config():\n"
        f"    c = tiny_config({str(tmp_path / 'run')!r}, {str(tmp_path / 'tok')!r}, **{overrides!r})\n"
        f"{body}"
        "    return c\n")
    return str(path)


def cli(*args: str, devices: int = 1, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m bsft_jax.train ARGS`` on ``devices`` CPU devices."""
    env = subprocess_env(JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "bsft_jax.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def wait_for_steps(proc: subprocess.Popen, metrics_path, steps: int, timeout: float = 180) -> None:
    """Waits until a training subprocess has logged ``steps`` metric lines (fails if it exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(metrics_path):
            with open(metrics_path) as f:
                if len(f.read().splitlines()) >= steps:
                    return
        time.sleep(0.2)
    out = proc.stdout.read() if proc.poll() is not None and proc.stdout else ""
    raise AssertionError(f"training process did not reach step {steps} (exit status {proc.poll()}): {out[-3000:]}")
