"""Every user-caused error at a CLI boundary is one line on stderr, exit 2, no traceback, nothing written.

Each case (tests/train/cli_cases.py) calls the CLI's ``main([...])`` in this process and reads stderr
with ``capsys``, in the repository folder as ``python -m`` would run; the console boundary itself (the
interpreter, ``sys.exit``, the real stderr) is proved by one real process per CLI in
tests/integration/test_cli_boundary.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback

import jax
import pytest

from tests.train.cli_cases import MALFORMED, ROOT, data_dir, outputs_under, problems_of, records, user_error_cases

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


def _check(cases: dict[str, tuple[list[str], str, str]], tmp_path, capsys) -> list[str]:
    results = {name: run_in_process(argv, capsys) for name, (argv, _, _) in cases.items()}
    return problems_of(cases, results, tmp_path)


def test_user_errors_end_in_one_line_and_exit_2(tmp_path, capsys):
    problems = _check(user_error_cases(tmp_path), tmp_path, capsys)
    assert not problems, "\n".join(problems)


def _permissions_do_not_bind(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    try:
        (probe / "x").write_text("")
        return True
    except PermissionError:
        return False
    finally:
        probe.chmod(0o755)


def test_read_only_outputs_end_in_one_line_and_exit_2(tmp_path, capsys):
    """A read-only run_dir / --out_dir / --out / --plan_json parent: one line at the start, not a traceback at the end.

    As root, permissions do not stop writes, and this process cannot drop the capability that bypasses
    them (CAP_DAC_OVERRIDE): tests/integration/test_cli_boundary.py then runs the same cases under setpriv.
    """
    if _permissions_do_not_bind(tmp_path):
        pytest.skip("this process writes into read-only folders (root): tests/integration/test_cli_boundary.py "
                    "runs these cases in processes without CAP_DAC_OVERRIDE")
    cases = {name: (argv, f"{flag}: ", "is not writable (permission denied)")
             for name, argv, flag in outputs_under(tmp_path, "read_only")}
    try:
        problems = _check(cases, tmp_path, capsys)
    finally:
        for name in cases:
            (tmp_path / name / "blocked").chmod(0o755)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_each_malformed_kind_is_a_data_error_in_process(tmp_path, kind):
    """The same ten kinds through read_jsonl (fast, exact message checks)."""
    from bsft_jax.data import DataError, read_jsonl

    line, expected = MALFORMED[kind]
    data = data_dir(tmp_path / "bb", line(records()))
    with pytest.raises(DataError) as e:
        read_jsonl(os.path.join(data, "train.jsonl"))
    assert str(e.value).startswith(f"{data}/train.jsonl:3: ") and expected in str(e.value), str(e.value)
