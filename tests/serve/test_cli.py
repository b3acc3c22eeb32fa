"""``python -m bsft_jax.serve`` refuses a bad command line with one ``error:`` line and exit status 2.

The mistakes are checked through ``main`` in this process (no interpreter, JAX or model start per case);
one case runs the module as a user does, to cover the entry point itself
(tests/integration/test_serve_process.py)."""

from __future__ import annotations

import pytest

from bsft_jax.serve import __main__ as serve_cli


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
