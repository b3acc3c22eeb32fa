"""``python -m bsft_jax.serve`` refuses a bad command line with one ``error:`` line and exit status 2.

The mistakes are checked through ``main`` in this process (no interpreter, JAX or model start per case);
one case runs the module as a user does, to cover the entry point itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bsft_jax.serve import __main__ as serve_cli

from .conftest import ROOT


@pytest.mark.parametrize("args,says", [
    ([], "give exactly one of --checkpoint"),
    (["--checkpoint", "/nonexistent/run", "--hf_path", "x"], "give exactly one of --checkpoint"),
    (["--checkpoint", "/nonexistent/run"], "is not a folder"),
    (["--port=80", "--no-such-flag"], "no_such_flag"),
])
def test_a_bad_command_line_is_one_error_line(args, says, capsys):
    code = serve_cli.main(["serve", *args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    assert says in lines[0]


def test_the_module_entry_point_says_the_same():
    done = subprocess.run([sys.executable, "-m", "bsft_jax.serve", "--checkpoint", "/nonexistent/run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), done.stderr[-2000:]
    assert "is not a folder" in lines[0]
