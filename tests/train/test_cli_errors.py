"""Every user-caused error at a CLI boundary is one line on stderr, exit 2, no traceback, nothing written.

Each case is a real ``python -m ...`` subprocess; they run concurrently (each one fails within
seconds of starting, so the whole batch costs about one interpreter start per core).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bsft_jax.data import generate_split

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _records() -> list[dict]:
    return [r.to_json() for r in generate_split("train", 39, seed=1)]


def _edit(change):
    """A malformed third line: the first record with ``change`` applied (id made unique)."""
    def make(recs):
        rec = json.loads(json.dumps(recs[0]))
        rec["id"] = "bad-line"
        change(rec, recs)
        return json.dumps(rec)
    return make


def _turns_without_speaker(rec, _):
    rec["turns"][0] = {"text": "hello"}


def _with_options_bad_label(rec, recs):
    rec.update(next(r for r in recs if r.get("options")), id="bad-line", label="Z")


# kind -> (third line of train.jsonl, what the error must name besides train.jsonl:3)
MALFORMED = {
    "invalid_json": (lambda recs: '{"id": oops', "not valid JSON"),
    "unknown_category": (_edit(lambda r, _: r.update(category="Bedside Manner")), "field 'category'"),
    "empty_turns": (_edit(lambda r, _: r.update(turns=[])), "field 'turns' is empty"),
    "non_list_turns": (_edit(lambda r, _: r.update(turns=5)), "field 'turns' must be a list"),
    "group_mismatch": (_edit(lambda r, _: r.update(group="proactive" if r["group"] != "proactive" else "reactive")),
                       "field 'group'"),
    "label_not_in_options": (_edit(_with_options_bad_label), "field 'label' is 'Z'"),
    "missing_field": (_edit(lambda r, _: r.pop("category")), "missing field 'category'"),
    "json_array_line": (lambda recs: "[1, 2, 3]", "expected a JSON object per line"),
    "duplicate_id": (lambda recs: json.dumps(recs[1]), "already used on line 2"),
    "turn_without_speaker": (_edit(_turns_without_speaker), "field 'turns[0]'"),
}


def _data_dir(folder, third_line: str | bytes | None = None, raw: bytes | None = None) -> str:
    recs = _records()
    folder.mkdir(parents=True)
    lines = [json.dumps(r) for r in recs[:6]]
    body = "\n".join(lines[:2] + ([third_line] if third_line is not None else []) + lines[2:]) + "\n"
    (folder / "train.jsonl").write_bytes(raw if raw is not None else body.encode())
    (folder / "test.jsonl").write_text("\n".join(lines[3:]) + "\n")
    return str(folder)


def _config(case_dir, **overrides) -> str:
    path = case_dir / "cfg.py"
    path.write_text(
        "from tests.train.common import tiny_config\n\n"
        "def get_config():\n"
        f"    return tiny_config({str(case_dir / 'run')!r}, {str(case_dir.parent / 'tok')!r}, **{overrides!r})\n")
    return str(path)


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _cases(tmp_path) -> dict[str, tuple[list[str], str, str]]:
    """name -> (argv after the interpreter, the place the error line must name, and what it must say)."""
    cases = {}
    for kind, (line, expected) in MALFORMED.items():
        case = tmp_path / kind
        data = _data_dir(case / "bb", line(_records()))
        cfg = _config(case, **{"data.source": "jsonl", "data.path": data})
        cases[kind] = (["-m", "bsft_jax.train", "--config", cfg], f"{data}/train.jsonl:3: ", expected)
    good = "\n".join(json.dumps(r) for r in _records()[:6]) + "\n"
    bad_utf8 = good.encode().split(b"\n")
    bad_utf8[2] = bad_utf8[2][:5] + b"\xc3\x28" + bad_utf8[2][5:]  # an invalid 2-byte sequence
    for kind, raw, line, expected in (
            ("invalid_utf8", b"\n".join(bad_utf8), 3, "not valid UTF-8 (byte 0xc3 at column 6)"),
            ("utf16_export", good.encode("utf-16"), 1, "the file is UTF-16-LE")):
        case = tmp_path / kind
        data = _data_dir(case / "bb", raw=raw)
        cases[kind] = (["-m", "bsft_jax.train", "--config", _config(case, **{"data.source": "jsonl",
                                                                               "data.path": data})],
                       f"{data}/train.jsonl:{line}: ", expected)
    missing = str(tmp_path / "configs" / "nope.py")
    cases["missing_config"] = (["-m", "bsft_jax.train", "--config", missing], f"--config {missing}: ", "no such file")
    cases["plan_missing_config"] = (["-m", "bsft_jax.train", "--plan", "--config", missing], f"--config {missing}: ",
                                    "no such file")
    case = tmp_path / "evaluate_bad_data"
    data = _data_dir(case / "bb", '{"id": oops')
    cases["evaluate_bad_data"] = (["-m", "bsft_jax.evaluate", "--config",
                                   _config(case, **{"data.source": "jsonl", "data.path": data}),
                                   "--baselines=few_shot", "--out_dir", str(case / "run" / "eval")],
                                  f"{data}/train.jsonl:3: ", "not valid JSON")
    return cases


def test_user_errors_end_in_one_line_and_exit_2(tmp_path):
    cases = _cases(tmp_path)
    procs = {name: _start(argv) for name, (argv, _, _) in cases.items()}
    problems = []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        _, where, what = cases[name]
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        ok = (proc.returncode == 2 and "Traceback" not in err + out and len(errors) == 1
              and where in errors[0] and what in errors[0]
              and not os.path.exists(tmp_path / name / "run"))  # nothing written: no run directory
        if not ok:
            problems.append(f"{name}: exit {proc.returncode}, error lines {errors}, stderr tail {err[-1500:]!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_each_malformed_kind_is_a_data_error_in_process(tmp_path, kind):
    """The same ten kinds through read_jsonl (fast, exact message checks)."""
    from bsft_jax.data import DataError, read_jsonl

    line, expected = MALFORMED[kind]
    data = _data_dir(tmp_path / "bb", line(_records()))
    with pytest.raises(DataError) as e:
        read_jsonl(os.path.join(data, "train.jsonl"))
    assert str(e.value).startswith(f"{data}/train.jsonl:3: ") and expected in str(e.value), str(e.value)
