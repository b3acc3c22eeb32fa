"""Every user-caused error at a CLI boundary is one line on stderr, exit 2, no traceback, nothing written.

Each case (tests/train/cli_cases.py) calls the CLI's ``main([...])`` in this process and reads stderr
with ``capsys``, in the repository folder as ``python -m`` would run; the console boundary itself (the
interpreter, ``sys.exit``, the real stderr) is proved by one real process per CLI in
tests/integration/test_cli_boundary.py.
"""

from __future__ import annotations

import os

import pytest

from tests.train.cli_cases import MALFORMED, data_dir, outputs_under, problems_of, records, user_error_cases
from tests.train.cli_main import run_in_process


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
