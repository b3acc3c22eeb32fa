"""bench.render: BENCHMARKS.md and docs/*.md hold exactly the tables rendered from the committed results.

Checks rendering only (no measuring): every table's records exist, each doc has its markers, and
the text between them is what the renderer makes. Plus the staleness check on a scratch git repo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from bench import common, demo_results, render, tables
from bench.common import cpu_info

ROOT = render.ROOT


def test_docs_hold_exactly_the_rendered_tables():
    docs = render.render_docs()
    assert set(docs) == {"BENCHMARKS.md", "docs/evaluation.md", "docs/training.md"}
    for doc, (current, rendered) in docs.items():
        assert current == rendered, f"{doc} differs from the results files: run `python -m bench.render`"
    for t in tables.TABLES:  # each table is in its doc once, stamped with a commit and a date
        text = docs[t.doc][0]
        assert text.count(f"<!-- table:{t.name} -->") == 1, t.name
        body = text.split(f"<!-- table:{t.name} -->\n", 1)[1].split("<!-- /table -->", 1)[0]
        source = os.path.join(ROOT, t.source)
        if t.pending and (not os.path.exists(source) or not t.select(tables.load_records(source))):
            assert body.startswith("_Not yet measured. Command: `"), t.name  # says so, and how to measure it
            continue
        assert body.startswith("<sub>Measured at commit `") and "\n| " in body, t.name
        assert ("; seed " in body) == t.seeded, t.name


def test_pending_table_renders_once_measured():
    t = next(t for t in tables.TABLES if t.name == "ablation")
    assert render.rendered(t, []).startswith("_Not yet measured")
    record = {"bench": "ablation", "machine": {"date": "2026-12-01T00:00:00", "git": "abc1234", "cpu_count": 2},
              "config": {"schemes": ["item"], "seeds": [0, 1, 2]},
              "results": {"wall_seconds": 7200, "item": {"test_items": 130, "macro_f1": {
                  arm: {"overall": {"mean": 0.5, "std": 0.01}} for arm in ("GeneralSFT", "BehaviorSFT")},
                  "diff_ci": {m: {"mean": 0.02, "ci_low": -0.01, "ci_high": 0.05} for m in ("proactive", "overall")}}}}
    body = render.rendered(t, [record])
    assert body.startswith("<sub>Measured at commit `abc1234`") and "| +2.0 [-1.0, +5.0] |" in body


def _copy_tree(tmp_path) -> str:
    docs = sorted({t.doc for t in tables.TABLES})
    for name in (*docs, tables.RESULTS, tables.DEMO_RESULTS, tables.ABLATION_RESULTS, tables.LEARNING_CURVE_RESULTS):
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    return str(tmp_path)


def test_a_hand_edited_number_is_caught(tmp_path):
    root = _copy_tree(tmp_path)
    path = os.path.join(root, "docs/evaluation.md")
    with open(path) as f:
        text = f.read()
    row = next(line for line in text.splitlines() if line.startswith("| **overall** |"))  # the demo table's
    edited = "| **overall** |" + "".join(" **99.9** |" for _ in range(row.count("|") - 2))
    assert edited != row
    with open(path, "w") as f:
        f.write(text.replace(row, edited))
    current, rendered = render.render_docs(root)["docs/evaluation.md"]
    assert current != rendered and row in rendered and edited not in rendered


def test_check_mode_exit_codes_and_rewrite(tmp_path, capsys):
    root = _copy_tree(tmp_path)
    assert render.main(["--check", "--root", root]) == 0
    path = os.path.join(root, "BENCHMARKS.md")
    with open(path) as f:
        text = f.read()
    row = next(line for line in text.splitlines() if line.startswith("| configs/demo.py |"))  # compile-time table
    edited = row.rsplit("|", 2)[0] + "| 99.99 |"
    assert edited != row
    with open(path, "w") as f:
        f.write(text.replace(row, edited))
    assert render.main(["--check", "--root", root]) == 1
    assert "BENCHMARKS.md: tables differ" in capsys.readouterr().err
    assert render.main(["--root", root]) == 0
    with open(path) as f:
        assert f.read() == text
    with open(path, "w") as f:
        f.write(text.replace("<!-- table:memory -->\n", ""))
    assert render.main(["--check", "--root", root]) == 2
    assert "no <!-- table:NAME --> marker for memory" in capsys.readouterr().err


def test_a_new_record_changes_the_rendered_table(tmp_path):
    root = _copy_tree(tmp_path)
    record = tables.load_records(os.path.join(root, tables.RESULTS))
    newest = [r for r in record if r["bench"] == "compile_time"][-1]
    newest = json.loads(json.dumps(newest))
    newest["results"]["rows"][0]["train_compile_s"] = 9.87
    newest["machine"].update(git="abcdef1", date="2027-01-02T03:04:05", cpu_model="Some CPU", cpu_flags=[], amx=False)
    with open(os.path.join(root, tables.RESULTS), "a") as f:
        f.write(json.dumps(newest) + "\n")
    _, rendered = render.render_docs(root)["BENCHMARKS.md"]
    block = rendered.split("<!-- table:compile-time -->\n", 1)[1].split("<!-- /table -->")[0]
    assert "| configs/demo.py | 4 | 128 | 16x256 | 9.87 |" in block
    assert "commit `abcdef1`, 2027-01-02, Some CPU, 2 CPUs (no AVX-512, no AMX)" in block


def test_unknown_marker_and_missing_marker_are_errors():
    with pytest.raises(ValueError, match="table:nope"):
        render.apply("a\n<!-- table:nope -->\nx\n<!-- /table -->\n", {}, "DOC.md")
    assert render.apply("<!-- table:t -->\nold\n<!-- /table -->\nkeep\n", {"t": "new\n"}, "D") == \
        "<!-- table:t -->\nnew\n<!-- /table -->\nkeep\n"


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_staleness_warning_names_changed_library_files(tmp_path):
    for rel in ("lib/models/m.py", "lib/data/d.py", "docs.md"):
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        (tmp_path / rel).write_text("1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "a")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True,
                            text=True).stdout.strip()
    table = render.Table("t", "docs.md", "r.jsonl", lambda rs: rs, lambda rs: "", ("lib", ":(exclude)lib/data"),
                         "make measure")
    records = [{"machine": {"git": commit, "date": "2026-01-01"}, "config": {}}]
    assert render.staleness_warnings(table, records, str(tmp_path)) == []
    (tmp_path / "lib/data/d.py").write_text("2\n")  # excluded: not stale
    (tmp_path / "docs.md").write_text("2\n")
    _git(tmp_path, "commit", "-qam", "b")
    assert render.staleness_warnings(table, records, str(tmp_path)) == []
    os.makedirs(tmp_path / "lib/models/moved", exist_ok=True)  # a module moving inside the package: stale
    (tmp_path / "lib/models/m.py").rename(tmp_path / "lib/models/moved/m.py")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "c")
    [warning] = render.staleness_warnings(table, records, str(tmp_path))
    assert f"measured at {commit}" in warning and "lib/models/moved/m.py" in warning and "make measure" in warning
    records[0]["machine"]["git"] = "0000000"
    [warning] = render.staleness_warnings(table, records, str(tmp_path))
    assert "cannot check commit 0000000" in warning


def test_measured_commit_reads_the_stamps_in_results():
    assert render.measured_commit({"git": "eb8e37c"}) == "eb8e37c"
    assert render.measured_commit({"git": "800b473+attention_impl (committed as 2d066df; ...)"}) == "2d066df"
    assert render.measured_commit({"git": ""}) == ""


def test_cpu_info_reads_model_and_amx(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
                    "flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert cpu_info(str(path)) == {"cpu_model": "Intel(R) Xeon(R) Platinum 8481C",
                                   "cpu_flags": ["amx_bf16", "amx_tile", "avx512_bf16", "avx512f"], "amx": True}
    assert cpu_info(str(tmp_path / "missing")) == {}


def test_demo_record_from_a_report():
    def run(f1s, behavior=None):
        return {"per_group": dict(zip(("reactive", "balanced", "proactive"), f1s)), "overall_f1": sum(f1s) / 3,
                "over_intervention": {"rate": 0.032}, "missed_intervention": {"rate": 0.012}, "behavior": behavior}

    report = {"runs": ["GeneralSFT", "BehaviorSFT"],
              "metrics": {"GeneralSFT": run([0.155, 0.994, 0.985]),
                          "BehaviorSFT": run([0.2, 0.991, 0.966], {"n": 8, "confusion": [[3, 0], [1, 4]],
                                                                   "accuracy": 0.875})}}
    rec = demo_results.demo_record(report, seed=3, wall_seconds=60.0, machine={"git": "abc1234"})
    assert rec["config"]["seed"] == 3 and rec["results"]["wall_seconds"] == 60.0
    b = rec["results"]["behaviorsft"]
    assert b["macro_f1_pct"] == {"reactive": 20.0, "balanced": 99.1, "proactive": 96.6, "overall": 71.9}
    assert (b["behavior_accuracy_pct"], b["behavior_majority_pct"]) == (87.5, 62.5)
    assert rec["results"]["generalsft"]["behavior_accuracy_pct"] is None
    with pytest.raises(ValueError, match="GeneralSFT"):
        demo_results.demo_record({"runs": ["x"], "metrics": {"x": {}}}, seed=0, wall_seconds=None, machine={})


def test_demo_record_with_four_arms_and_probe_renders():
    def run(f1, behavior=None):
        return {"per_group": {"reactive": f1, "balanced": f1, "proactive": f1}, "overall_f1": f1,
                "over_intervention": {"rate": 0.1}, "missed_intervention": {"rate": 0.2}, "behavior": behavior}

    names = ["few-shot (k=3)", "explicit instruction", "GeneralSFT", "BehaviorSFT"]
    report = {"runs": names, "metrics": {n: run(0.1 * (i + 1)) for i, n in enumerate(names)},
              "steering_probe": {"BehaviorSFT": {"hold": {"flag_rate": 0.0, "none_rate": 1.0, "unparsed_rate": 0.0}}}}
    rec = demo_results.demo_record(report, seed=0, wall_seconds=1800.0, machine={"git": "abc1234"},
                                   stage_seconds={"train BehaviorSFT": 364.3, "evaluate": 59.9})
    assert rec["results"]["few_shot"]["macro_f1_pct"]["overall"] == 10.0
    assert rec["results"]["steering_probe_pct"]["hold"] == {"flag_rate": 0.0, "none_rate": 100.0, "unparsed_rate": 0.0}
    table = tables.render_demo([rec])
    assert "| macro-F1 (%) | few-shot (k=3) | explicit instruction | GeneralSFT | BehaviorSFT |" in table
    assert "| **overall** | **10.0** | **20.0** | **30.0** | **40.0** |" in table
    assert "hold: 0.0 / 100.0 / 0.0" in table and "30 min" in table
    assert "Stages (`runs/demo_report/stages.json`): train BehaviorSFT 6m04s; evaluate 0m59s." in table


def test_demo_results_cli_reads_the_stage_times_beside_the_report(tmp_path):
    names = ["GeneralSFT", "BehaviorSFT"]
    run = {"per_group": {"reactive": 0.5}, "overall_f1": 0.5, "over_intervention": {"rate": 0.0},
           "missed_intervention": {"rate": 0.0}, "behavior": None}
    (tmp_path / "report.json").write_text(json.dumps({"runs": names, "metrics": {n: run for n in names}}))
    (tmp_path / "stages.json").write_text(json.dumps({"seconds": {"evaluate": 12.5}, "total_seconds": 12.5}))
    out = tmp_path / "demo_results.json"
    assert demo_results.main(["--report", str(tmp_path / "report.json"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["results"]["stage_seconds"] == {"evaluate": 12.5}


def test_plan_table_records_rows_that_render(tmp_path, monkeypatch, capsys):
    from bench import plan_table

    gib = 1024**3

    def fake_plan(config, target, mesh, compiler, cached_only=False):
        if compiler == "tpu" and not target.startswith("v"):
            return None
        devices = int(target.split("-")[-1]) // 2 if target.startswith("v") else 8
        tensor = 4 if "tensor=4" in mesh else 1
        return {"compiler": compiler, "num_devices": devices, "hbm_bytes_per_device": 16 * gib, "fits": True,
                "mesh": {"data": 1, "fsdp": devices // tensor, "tensor": tensor},
                "analytic": {"params": gib, "opt_state": 2 * gib, "gradients": 2 * gib},
                "xla": {"temp": (5 if compiler == "tpu" else 7) * gib, "peak": (8 if compiler == "tpu" else 11) * gib}}

    monkeypatch.setattr(plan_table, "plan", fake_plan)
    monkeypatch.setattr(common, "machine_info", lambda: {"git": "abc1234", "date": "2026-11-30T00:00:00"})
    results = str(tmp_path / "results.jsonl")
    plan_table.main(["--results", results, "--jobs", "2"])
    [record] = tables.load_records(results)
    assert record["bench"] == "plan_table" and record["machine"]["git"]
    assert len(record["results"]["rows"]) == len(plan_table.RECIPES) * len(plan_table.SLICES)
    text = tables.plan_table_markdown(record)
    assert text in capsys.readouterr().out
    assert "| Qwen2.5-7B | v5e-64 (32, 16 GiB) | fsdp=8 tensor=4 | 1.00 | 2.00 | 2.00 | 5.0 | 8.0 | 11.0 | yes |" \
        in text
    assert "| Llama-3.1-8B | 8x H100 (8, 16 GiB) | fsdp=8 | 1.00 | 2.00 | 2.00 | 7.0 (CPU) | - | 11.0 | yes* |" in text


def test_newest_per_size_keeps_one_record_per_size_and_key():
    recs = [{"bench": "b", "config": {"size": s, "impls": i}, "n": n}
            for n, (s, i) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("a", "x")])]
    pick = tables._newest_per_size(lambda rs: rs, "impls")
    assert [r["n"] for r in pick(recs)] == [1, 2, 3]  # file order; the older ("a", "x") dropped
    assert [r["n"] for r in tables._newest_per_size(lambda rs: rs)(recs)] == [2, 3]
