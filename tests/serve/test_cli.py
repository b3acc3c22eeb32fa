"""``python -m bsft_jax.serve`` refuses a bad command line with one ``error:`` line and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import ROOT


@pytest.mark.parametrize("args,says", [
    ([], "give exactly one of --checkpoint"),
    (["--checkpoint", "/nonexistent/run", "--hf_path", "x"], "give exactly one of --checkpoint"),
    (["--checkpoint", "/nonexistent/run"], "is not a folder"),
    (["--port=80", "--no_such_flag"], "no_such_flag"),
])
def test_a_bad_command_line_is_one_error_line(args, says):
    done = subprocess.run([sys.executable, "-m", "bsft_jax.serve", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), done.stderr[-2000:]
    assert says in lines[0]
