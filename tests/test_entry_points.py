"""Every installed console script answers ``--help``; a missing or broken ``--config`` file is one line, exit 2."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def console_scripts() -> list[importlib.metadata.EntryPoint]:
    """The console scripts the installed bsft_jax distribution declares (from its metadata, not setup.py)."""
    dist = importlib.metadata.distribution("bsft_jax")
    return [ep for ep in dist.entry_points if ep.group == "console_scripts"]


def test_the_distribution_declares_the_three_commands():
    assert {ep.name for ep in console_scripts()} == {"bsft-train", "bsft-evaluate", "bsft-export"}


@pytest.mark.parametrize("name", ["bsft-train", "bsft-evaluate", "bsft-export"])
def test_console_script_help_runs_from_the_installed_environment(name):
    ep = next(ep for ep in console_scripts() if ep.name == name)
    ep.load()  # the target exists (an entry point naming a missing function fails here)
    script = os.path.join(BIN, name)
    assert os.path.exists(script), f"{script} is not installed: run make install"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--config" in out.stdout or "--checkpoint" in out.stdout or "run_dir" in out.stdout


BROKEN = {
    "missing": None,
    "syntax": "def get_config(:\n",
    "raises": "def get_config():\n    raise RuntimeError('boom')\n",
    "no_get_config": "x = 1\n",
}


@pytest.mark.parametrize("module", ["bsft_jax.train", "bsft_jax.evaluate", "bsft_jax.mainjob"])
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_missing_or_broken_config_file_is_one_line_and_exit_2(tmp_path, module, kind):
    path = tmp_path / "nope.py"
    if BROKEN[kind] is not None:
        path.write_text(BROKEN[kind])
    out = subprocess.run([sys.executable, "-m", module, "--config", str(path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nope.py" in errors[0], out.stderr[-2000:]
