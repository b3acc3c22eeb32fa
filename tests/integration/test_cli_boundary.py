"""The console boundary of each CLI, through real ``python -m`` processes: a user error is one line on the
real stderr and exit status 2 (no traceback), as the in-process cases of tests/train/test_cli_errors.py
and tests/models/test_builtin.py find through ``main([...])``.

One process per CLI (train, evaluate, export, the planner, the built-in model converter); as root, the
read-only cases too, under setpriv (an in-process test cannot drop the capability that bypasses permissions).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.processes import ROOT, subprocess_env
from tests.train.cli_cases import outputs_under, problems_of


def _start(args: list[str], prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    env = subprocess_env(JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu")
    return subprocess.Popen([*prefix, sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run_all(cases: dict[str, tuple[list[str], str, str]], prefix: tuple[str, ...] = (), at_once: int = 6
             ) -> dict[str, tuple[int, str, str]]:
    """name -> (exit status, stdout, stderr) of every case, ``at_once`` processes at a time (each one
    fails within seconds of starting; more at once would only compete for cores and memory)."""
    results, running, pending = {}, {}, list(cases)
    while pending or running:
        while pending and len(running) < at_once:
            name = pending.pop(0)
            running[name] = _start(cases[name][0], prefix)
        name = next(iter(running))
        proc = running.pop(name)
        out, err = proc.communicate(timeout=300)
        results[name] = (proc.returncode, out, err)
    return results


def test_one_process_per_cli_ends_in_one_line_and_exit_2(tmp_path):
    """train, evaluate, export and --plan, each writing under a file: the one line, exit 2, nothing written."""
    cases = {name: (argv, f"{flag}: ", "is a file, so") for name, argv, flag in outputs_under(tmp_path, "under_a_file")}
    assert sorted(argv[1] for argv, _, _ in cases.values()) == ["bsft_jax.evaluate", "bsft_jax.export",
                                                                "bsft_jax.train", "bsft_jax.train"]
    problems = problems_of(cases, _run_all(cases), tmp_path)
    assert not problems, "\n".join(problems)


def test_read_only_outputs_end_in_one_line_and_exit_2_as_root(tmp_path):
    """A read-only run_dir / --out_dir / --out / --plan_json parent: one line at the start, not a traceback at the end.

    As root, permissions do not stop writes: the commands run under setpriv without the capability that
    bypasses them (CAP_DAC_OVERRIDE). Not root: tests/train/test_cli_errors.py runs the cases in-process.
    """
    if os.geteuid() != 0:
        pytest.skip("not root: tests/train/test_cli_errors.py checks read-only outputs in-process")
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be simulated (not tested)")
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
    cases = {name: (argv, f"{flag}: ", "is not writable (permission denied)")
             for name, argv, flag in outputs_under(tmp_path, "read_only")}
    try:
        problems = problems_of(cases, _run_all(cases, prefix), tmp_path)
    finally:
        for name in cases:
            (tmp_path / name / "blocked").chmod(0o755)
    assert not problems, "\n".join(problems)


def test_builtin_cli_unknown_name_exits_2_with_one_line():
    """python -m bsft_jax.models.builtin (moved from tests/models/test_builtin.py, which keeps the in-process twin)."""
    env = subprocess_env(JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "bsft_jax.models.builtin", "no-such-model"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: unknown built-in model 'no-such-model'; known: qwen2.5-coder-0.5b-instruct, smollm2-135m-instruct"]
