"""The data loader under a seeded fuzzer (tests/data/fuzz_jsonl.py): thousands of broken JSONL records and
files, in-process, in seconds. Every case either loads (records that are whole: they round-trip and encode
as UTF-8) or fails with one DataError line naming ``file:line``; never another exception, never a hang.
The bugs the fuzzer found are kept below as regression cases.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time

import pytest

from bsft_jax.data.schema import DataError, Record, read_dir, read_jsonl, record_from_dict

from .fuzz_jsonl import JsonlMutator

CASES = 2400
SEED = 29
CASE_SECONDS = 10  # a case that uses more CPU than this is a hang
CASE_WALL_SECONDS = 120  # a case that waits this long without using the CPU is a hang too


@contextlib.contextmanager
def _deadline(seconds: float, wall_seconds: float = CASE_WALL_SECONDS):
    """Raises TimeoutError in a case that spins for ``seconds`` of CPU (counted in CPU time, so a machine
    loaded by other jobs does not make a slow case look like a hang) or blocks for ``wall_seconds``."""

    def expired(*_):
        raise TimeoutError(f"case still running after {seconds} s of CPU or {wall_seconds} s")

    previous = {sig: signal.signal(sig, expired) for sig in (signal.SIGPROF, signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_PROF, seconds)
    signal.setitimer(signal.ITIMER_REAL, wall_seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_loaded(records: list[Record]) -> None:
    """Loaded records are whole: they encode as UTF-8 and read back equal."""
    for rec in records:
        json.dumps(rec.to_json(), ensure_ascii=False).encode("utf-8")
        assert record_from_dict(rec.to_json()) == rec


def check_file(path: str, data: bytes) -> str:
    """``"loaded"`` or ``"error"``; raises AssertionError (or the unexpected exception) otherwise."""
    with open(path, "wb") as f:
        f.write(data)
    try:
        records = read_jsonl(path)
    except DataError as e:
        msg = str(e)
        assert re.match(rf"{re.escape(path)}:\d+: \S", msg), f"error does not name file:line: {msg[:300]}"
        assert "\n" not in msg and len(msg) < 2000, f"not one short line: {msg[:300]!r}"
        return "error"
    _check_loaded(records)
    return "loaded"


def check_record(obj, where: str = "fuzz.jsonl:7") -> str:
    try:
        rec = record_from_dict(obj, where=where)
    except DataError as e:
        msg = str(e)
        assert msg.startswith(where + ": "), msg[:300]
        assert "\n" not in msg and len(msg) < 2000, f"not one short line: {msg[:300]!r}"
        return "error"
    _check_loaded([rec])
    return "loaded"


def test_fuzzed_records_and_files_load_or_fail_with_file_and_line(tmp_path):
    mutator = JsonlMutator(SEED)
    outcomes = {"loaded": 0, "error": 0}
    failures = []
    path = str(tmp_path / "fuzz.jsonl")
    t0, cpu0 = time.monotonic(), time.process_time()
    for i in range(CASES):
        kind, case = mutator.case(i)
        try:
            with _deadline(CASE_SECONDS):
                outcome = check_file(path, case) if kind == "file" else check_record(case)
            outcomes[outcome] += 1
        except Exception as e:  # every other exception is a finding
            failures.append(f"case {i} ({kind}): {type(e).__name__}: {str(e)[:200]!r}")
    seconds, cpu = time.monotonic() - t0, time.process_time() - cpu0
    print(f"{CASES} cases in {seconds:.1f} s ({cpu:.1f} s of CPU): {outcomes}")
    assert not failures, f"{len(failures)} of {CASES} cases failed:\n" + "\n".join(failures[:30])
    assert outcomes["loaded"] > CASES // 20 and outcomes["error"] > CASES // 2, outcomes  # both paths exercised


def test_fuzzed_split_files_through_the_configured_source(tmp_path):
    """The same files as a ``data.source=jsonl`` split (bsft_jax.setup.sources.load_split): a file with no
    record at all is the one error without a line to name."""
    import dataclasses

    from bsft_jax.setup.config import default_config
    from bsft_jax.setup.settings import Settings
    from bsft_jax.setup.sources import load_split

    settings = Settings.from_config(default_config())
    data = dataclasses.replace(settings.data, source="jsonl", path=str(tmp_path))
    path = str(tmp_path / "train.jsonl")
    mutator = JsonlMutator(SEED + 1)
    outcomes = {"loaded": 0, "error": 0}
    for i in range(400):
        kind, case = mutator.case(i)
        if kind != "file":
            continue
        with open(path, "wb") as f:
            f.write(case)
        with _deadline(CASE_SECONDS):
            try:
                _check_loaded(load_split(data, settings.behavior.spec, "train"))
                outcomes["loaded"] += 1
            except DataError as e:
                assert re.match(rf"{re.escape(path)}(:\d+: \S|: no records)", str(e)), f"case {i}: {str(e)[:300]}"
                outcomes["error"] += 1
    assert outcomes["loaded"] and outcomes["error"], outcomes


def test_read_dir_names_the_file_and_line_of_a_duplicate_across_files(tmp_path):
    good = json.dumps({"id": "same", "category": "Consistency Check", "turns": [["Case", "x"]], "label": "none"})
    (tmp_path / "a.jsonl").write_text(good + "\n")
    (tmp_path / "b.jsonl").write_text("\n" + good + "\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'b.jsonl'))}:2: .*also appears in .*a.jsonl:1"):
        read_dir(str(tmp_path))


# ----------------------------------------------------------------------------- what the fuzzer found
GOOD = {"id": "g", "category": "Consistency Check", "turns": [{"speaker": "Case", "text": "x"}], "label": "none"}


def _line(**change) -> str:
    return json.dumps({**GOOD, **change})


def _raw_field(name: str, raw_json: str) -> str:
    """A good record whose field ``name`` is the JSON text ``raw_json`` (what json.dumps cannot write)."""
    return _line(**{name: "@@RAW@@"}).replace('"@@RAW@@"', raw_json)


# The fuzzer's findings on the loader as it was (seed 29, 2,400 cases): 34 RecursionError tracebacks,
# 12 ValueError tracebacks, 8 error lines quoting a whole 300 kB value, 3 records that loaded with text no
# UTF-8 file can hold. name -> (file content, the DataError it must now raise, or None: it must load)
REGRESSIONS = {
    # json.loads recurses once per level: a traceback (RecursionError) instead of file:line
    "deep_nesting_line": (b"[" * 100_000 + b"\n", r"f\.jsonl:1: not valid JSON here: arrays or objects nested too "
                                                   r"deeply"),
    "deep_nesting_in_a_field": (_raw_field("turns", "[" * 5000 + "]" * 5000), r"f\.jsonl:1: .*nested too deeply"),
    # Python refuses integers of more than 4,300 digits with a plain ValueError (not a JSONDecodeError)
    "huge_integer": (_raw_field("id", "9" * 5000), r"f\.jsonl:1: not valid JSON here \(Exceeds the limit"),
    "huge_integer_in_turns_text": (_line(turns="[" + "9" * 5000 + "]"),
                                   r"f\.jsonl:1: field 'turns' \(a string\) is not valid JSON here"),
    "deep_nesting_in_options_text": (_line(options="[" * 100_000),
                                     r"f\.jsonl:1: field 'options' \(a string\) is not valid JSON here"),
    # a "\ud800" escape decodes to a lone surrogate: the record loaded, and broke later when encoded
    "lone_surrogate": (_line(turns=[{"speaker": "Case", "text": "K+ \ud800 high"}]),
                       r"f\.jsonl:1: field 'turns\[0\]\.text' holds the unpaired surrogate"),
    "surrogate_pair_loads": (_line(turns=[{"speaker": "Case", "text": "\ud83e\ude7a K+ 6.9"}]), None),
    # the error quoted the whole value: a 300,000-character "line"
    "huge_value_quoted_short": (_line(label="é" * 300_000), r"f\.jsonl:1: field 'label' is '[é.]{20,70}'; expected"),
    "huge_key_list_quoted_short": (_line(turns=[{f"k{i}": 1 for i in range(50_000)}]),
                                   r"f\.jsonl:1: field 'turns\[0\]' needs keys .* got keys \['k0', .*\.\.\.\]$"),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_fuzzer_finding_stays_fixed(tmp_path, name):
    data, expected = REGRESSIONS[name]
    path = str(tmp_path / "f.jsonl")
    with _deadline(CASE_SECONDS):
        outcome = check_file(path, data if isinstance(data, bytes) else data.encode("utf-8"))
    assert outcome == ("error" if expected else "loaded")
    if expected:
        with pytest.raises(DataError, match=expected):
            read_jsonl(path)
    assert os.path.exists(path)
