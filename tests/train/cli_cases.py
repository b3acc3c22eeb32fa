"""The user-error cases of the CLIs (train, evaluate, export, plan): each one a command line, the place
its one error line must name, and what it must say. Shared by tests/train/test_cli_errors.py (in-process
``main([...])``) and tests/integration/test_cli_boundary.py (real ``python -m`` processes).

Each case is ``name -> (argv after the interpreter: ["-m", MODULE, ...], where, what)``; files a case
writes go under ``<tmp_path>/<name>`` (``run``, ``blocked/...``: checked to stay absent).
"""

from __future__ import annotations

import json
import os

from bsft_jax.data import generate_split

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WRITTEN = ("run", "blocked/run", "blocked/eval", "blocked/hf", "blocked/plan.json")


def records() -> list[dict]:
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


def data_dir(folder, third_line: str | bytes | None = None, raw: bytes | None = None) -> str:
    recs = records()
    folder.mkdir(parents=True)
    lines = [json.dumps(r) for r in recs[:6]]
    body = "\n".join(lines[:2] + ([third_line] if third_line is not None else []) + lines[2:]) + "\n"
    (folder / "train.jsonl").write_bytes(raw if raw is not None else body.encode())
    (folder / "test.jsonl").write_text("\n".join(lines[3:]) + "\n")
    return str(folder)


def config_file(case_dir, run_dir: str | None = None, **overrides) -> str:
    """CASE_DIR/cfg.py: tests/train/common.tiny_config with its run in ``run_dir`` (CASE_DIR/run by default),
    the tokenizer in CASE_DIR/../tok, and ``overrides``."""
    case_dir.mkdir(parents=True, exist_ok=True)
    path = case_dir / "cfg.py"
    run_dir = run_dir or str(case_dir / "run")
    path.write_text(
        "from tests.train.common import tiny_config\n\n"
        "def get_config():\n"
        f"    return tiny_config({run_dir!r}, {str(case_dir.parent / 'tok')!r}, **{overrides!r})\n")
    return str(path)


def _jsonl(path: str) -> list[str]:
    return ["--config.data.source=jsonl", f"--config.data.path={path}"]


def user_error_cases(tmp_path) -> dict[str, tuple[list[str], str, str]]:
    """name -> (argv after the interpreter, the place the error line must name, and what it must say)."""
    cases = {}
    for kind, (line, expected) in MALFORMED.items():
        case = tmp_path / kind
        data = data_dir(case / "bb", line(records()))
        cfg = config_file(case, **{"data.source": "jsonl", "data.path": data})
        cases[kind] = (["-m", "bsft_jax.train", "--config", cfg], f"{data}/train.jsonl:3: ", expected)
    good = "\n".join(json.dumps(r) for r in records()[:6]) + "\n"
    bad_utf8 = good.encode().split(b"\n")
    bad_utf8[2] = bad_utf8[2][:5] + b"\xc3\x28" + bad_utf8[2][5:]  # an invalid 2-byte sequence
    for kind, raw, line, expected in (
            ("invalid_utf8", b"\n".join(bad_utf8), 3, "not valid UTF-8 (byte 0xc3 at column 6)"),
            ("utf16_export", good.encode("utf-16"), 1, "the file is UTF-16-LE")):
        case = tmp_path / kind
        data = data_dir(case / "bb", raw=raw)
        cases[kind] = (["-m", "bsft_jax.train", "--config", config_file(case, **{"data.source": "jsonl",
                                                                               "data.path": data})],
                       f"{data}/train.jsonl:{line}: ", expected)
    missing = str(tmp_path / "configs" / "nope.py")
    cases["missing_config"] = (["-m", "bsft_jax.train", "--config", missing], f"--config {missing}: ", "no such file")
    cases["plan_missing_config"] = (["-m", "bsft_jax.train", "--plan", "--config", missing], f"--config {missing}: ",
                                    "no such file")
    case = tmp_path / "evaluate_bad_data"
    data = data_dir(case / "bb", '{"id": oops')
    cases["evaluate_bad_data"] = (["-m", "bsft_jax.evaluate", "--config",
                                   config_file(case, **{"data.source": "jsonl", "data.path": data}),
                                   "--baselines=few_shot", "--out_dir", str(case / "run" / "eval")],
                                  f"{data}/train.jsonl:3: ", "not valid JSON")
    cases.update(_empty_data_cases(tmp_path))
    cases.update(_path_cases(tmp_path))
    return cases


def _empty_data_cases(tmp_path) -> dict[str, tuple[list[str], str, str]]:
    """Empty or blank-only split files (train, or the eval split a run with eval_every uses), for train and evaluate."""
    cases = {}
    for name, file, body, extra in (("empty_train", "train.jsonl", "", []),
                                    ("blank_lines_train", "train.jsonl", "\n  \n\n", []),
                                    ("empty_eval_split", "test.jsonl", "", ["--config.train.eval_every=2"])):
        case = tmp_path / name
        data = data_dir(case / "bb")
        (case / "bb" / file).write_text(body)
        cases[name] = (["-m", "bsft_jax.train", "--config", config_file(case), *_jsonl(data), *extra],
                       f"{data}/{file}: ", "no records")
    case = tmp_path / "evaluate_empty_test"
    data = data_dir(case / "bb")
    (case / "bb" / "test.jsonl").write_text("")
    cases["evaluate_empty_test"] = (["-m", "bsft_jax.evaluate", "--config", config_file(case), *_jsonl(data),
                                     "--baselines=few_shot", "--out_dir", str(case / "run" / "eval")],
                                    f"{data}/test.jsonl: ", "no records")
    case = tmp_path / "evaluate_synthetic"
    cases["evaluate_synthetic"] = (["-m", "bsft_jax.evaluate", "--config", config_file(case), "--baselines=few_shot",
                                    "--out_dir", str(case / "run" / "eval")],
                                   "config.data.source='synthetic'", "set config.data.source to")
    return cases


def _path_cases(tmp_path) -> dict[str, tuple[list[str], str, str]]:
    """Files where folders belong, a damaged run config.json, positional arguments, bad planner flags."""
    cases = {}
    for name, run_dir in (("run_dir_is_a_file", "file"), ("run_dir_under_a_file", "file/run")):
        case = tmp_path / name
        case.mkdir()
        (case / "file").write_text("not a folder")
        cfg = config_file(case, str(case / run_dir))
        cases[name] = (["-m", "bsft_jax.train", "--config", cfg], "config.run_dir: ", "is a file")
    case = tmp_path / "data_path_is_a_file"
    data = data_dir(case / "bb")
    cases["data_path_is_a_file"] = (["-m", "bsft_jax.train", "--config", config_file(case),
                                     *_jsonl(f"{data}/train.jsonl")], "config.data.path: ",
                                    "is a file; expected a folder with train.jsonl and test.jsonl")
    case = tmp_path / "positional_config"
    cases["positional_config"] = (["-m", "bsft_jax.train", config_file(case)], f"unexpected argument '{case}/cfg.py'",
                                  f"did you mean --config {case}/cfg.py?")
    cases["plan_hbm"] = (["-m", "bsft_jax.train", "--plan", "--config", config_file(tmp_path / "plan_hbm"),
                          "--plan_hbm=lots"], "--plan_hbm='lots': ", "use e.g. '16GiB'")
    cases["plan_devices"] = (["-m", "bsft_jax.train", "--plan", "--config", config_file(tmp_path / "plan_devices"),
                              "--plan_devices=-4", "--mesh=data=1,fsdp=-1,tensor=1"], "--plan_devices=-4: ",
                             "must be a positive number")
    for name, argv, flag in outputs_under(tmp_path, "under_a_file"):
        cases[name] = (argv, f"{flag}: ", "is a file, so")
    case = tmp_path / "evaluate_damaged_run_config"
    data = data_dir(case / "bb")
    (case / "fake_run").mkdir()
    (case / "fake_run" / "config.json").write_text('{"model": {"sou')
    cases["evaluate_damaged_run_config"] = (
        ["-m", "bsft_jax.evaluate", "--config", config_file(case), *_jsonl(data), "--baselines=",
         "--checkpoint", str(case / "fake_run"), "--out_dir", str(case / "run" / "eval")],
        f"{case}/fake_run/config.json: not valid JSON", "restore it from a copy")
    return cases


def outputs_under(tmp_path, kind: str) -> list[tuple[str, list[str], str]]:
    """(name, argv, flag) of train, evaluate, export and plan writing under ``<case>/blocked``: a file
    (kind 'under_a_file') or a read-only folder (kind 'read_only'). The run folders exist but hold no
    checkpoint: each command must stop at the output check, before reading anything."""
    out = []
    for cmd in ("train", "evaluate", "export", "plan"):
        case = tmp_path / f"{cmd}_{kind}"
        case.mkdir(parents=True)
        blocked = case / "blocked"
        if kind == "under_a_file":
            blocked.write_text("a file")
        else:
            blocked.mkdir()
            blocked.chmod(0o555)
        data = data_dir(case / "bb")
        (case / "empty_run").mkdir()
        if cmd == "train":
            argv, flag = ["-m", "bsft_jax.train", "--config", config_file(case, str(blocked / "run"))], "config.run_dir"
        elif cmd == "evaluate":
            argv, flag = (["-m", "bsft_jax.evaluate", "--config", config_file(case), *_jsonl(data), "--baselines=",
                           "--checkpoint", str(case / "empty_run"), "--out_dir", str(blocked / "eval")], "--out_dir")
        elif cmd == "export":
            argv, flag = (["-m", "bsft_jax.export", "--checkpoint", str(case / "empty_run"), "--out",
                           str(blocked / "hf")], "--out")
        else:
            argv, flag = (["-m", "bsft_jax.train", "--plan", "--config", config_file(case), "--plan_json",
                           str(blocked / "plan.json")], "--plan_json")
        out.append((f"{cmd}_{kind}", argv, flag))
    return out


def problems_of(cases: dict[str, tuple[list[str], str, str]], results: dict[str, tuple[int, str, str]],
                tmp_path) -> list[str]:
    """What went wrong in ``results`` (name -> (exit status, stdout, stderr)): each case must exit 2 with
    stderr exactly the one ``error:`` line naming the place and the problem, no traceback, and nothing
    written (no run or output folder appeared)."""
    problems = []
    for name, (code, out, err) in results.items():
        _, where, what = cases[name]
        lines = [line for line in err.splitlines() if line.strip()]
        written = [p for p in WRITTEN if os.path.exists(tmp_path / name / p)]
        ok = (code == 2 and "Traceback" not in err + out and len(lines) == 1
              and lines[0].startswith("error: ") and where in lines[0] and what in lines[0] and not written)
        if not ok:
            problems.append(f"{name}: exit {code}, written {written}, stderr {err[-1500:]!r}")
    return problems
