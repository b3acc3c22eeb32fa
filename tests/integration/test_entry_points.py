"""Every installed console script answers ``--help``; a missing or broken ``--config`` file is one line, exit 2."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

from tests.processes import ROOT, subprocess_env

BIN = os.path.dirname(sys.executable)


def console_scripts() -> list[importlib.metadata.EntryPoint]:
    """The console scripts the installed bsft_jax distribution declares (from its metadata, not setup.py)."""
    dist = importlib.metadata.distribution("bsft_jax")
    return [ep for ep in dist.entry_points if ep.group == "console_scripts"]


COMMANDS = ["bsft-train", "bsft-evaluate", "bsft-export", "bsft-serve"]


def test_the_distribution_declares_the_four_commands():
    assert {ep.name for ep in console_scripts()} == set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
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
                         cwd=ROOT, timeout=120, env=subprocess_env(JAX_PLATFORMS="cpu"))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]  # the error line and nothing else
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope.py" in lines[0], out.stderr[-2000:]


# A bug (not bad input) must keep its traceback and exit 1: each CLI's main with one internal
# function replaced by one that raises RuntimeError, through the same boundary as real runs.
BUGS = {
    "bsft_jax.train": ("bsft_jax.train.__main__", "run", ["--config", "{cfg}"]),
    "bsft_jax.evaluate": ("bsft_jax.evaluate.__main__", "run_comparison", ["--config", "{cfg}"]),
    "bsft_jax.export": ("bsft_jax.export.__main__", "export_checkpoint",
                        ["--checkpoint", "{tmp}", "--out", "{tmp}/hf"]),
}


@pytest.mark.parametrize("module", sorted(BUGS))
def test_a_bug_keeps_its_traceback_and_exits_1(tmp_path, module):
    where, name, args = BUGS[module]
    cfg = tmp_path / "cfg.py"
    cfg.write_text("from tests.train.common import tiny_config\n\n"
                   f"def get_config():\n    return tiny_config({str(tmp_path / 'run')!r}, {str(tmp_path / 'tok')!r})\n")
    argv = [a.format(cfg=cfg, tmp=tmp_path) for a in args]
    code = ("import importlib, sys\n"
            f"m = importlib.import_module({where!r})\n"
            "def bug(*a, **k):\n    raise RuntimeError('internal invariant broken (a bug)')\n"
            f"setattr(m, {name!r}, bug)\n"
            f"sys.exit(m.main([{module!r}, *{argv!r}] if {module!r} != 'bsft_jax.export' else {argv!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env=subprocess_env(JAX_PLATFORMS="cpu"))
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback (most recent call last)" in out.stderr, out.stderr[-2000:]
    assert "RuntimeError: internal invariant broken (a bug)" in out.stderr.splitlines()[-1]
    assert not any(line.startswith("error:") for line in out.stderr.splitlines())  # not dressed as a user error
