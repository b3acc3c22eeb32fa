"""Helpers that start processes: for the slow tiers only (tests/integration, tests/multihost, tests/realweights).

A test outside those folders must not import this module (tests/test_tiers.py checks it). Every
subprocess of the suite shares the session's JAX persistent compilation cache with the pytest process
(tests/compilation_cache.py, through the environment), so a program compiled once is read back after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
