"""The LLM-judge hook against a scripted OpenAI-compatible endpoint on loopback: ratings parsed, garbage and
errors counted (with retries and backoff), the evaluation never fails, the key sent and never logged, and
the report gains the judge section; ``python -m bsft_jax.evaluate --judge_url ...`` end to end (in process)
and its flag mistakes. (Against the project's own server: tests/serve/test_judge_server.py.)"""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from bsft_jax.evaluate import __main__ as evaluate_cli
from bsft_jax.evaluate.judge import Judge, JudgeSettings, add_judge_to_report, judge_run, load_prompts, parse_rating

KEY = "judge-secret-42"


@pytest.mark.parametrize("text,want", [("Score: 4", 4), ("**Rating**: 5\nbecause", 5), ("3", 3), ("score=2.", 2),
                                       ("I think 4/5", None), ("Score: 7", None), ("", None), (None, None),
                                       ("Score: 4.5", None)])
def test_parse_rating(text, want):
    assert parse_rating(text) == want


class Scripted(BaseHTTPRequestHandler):
    """Answers each POST with the next scripted (status, content) and records the requests."""

    script: list = []
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Scripted.seen.append((self.path, self.headers.get("Authorization"), body))
        status, content = Scripted.script.pop(0) if Scripted.script else (200, "Score: 3")
        if status == 200 and content is not None:
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        else:
            payload = b"<html>garbage</html>"
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Scripted.script, Scripted.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_ratings_garbage_and_errors_are_counted_and_the_run_completes(endpoint, monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    waits = []
    judge = Judge(JudgeSettings(endpoint, "judge-model", key_env="JUDGE_KEY", retries=2, backoff_s=0.5),
                  sleep=waits.append)
    criteria = list(load_prompts())
    assert criteria == ["specificity", "implicitness"]
    Scripted.script = [
        (200, "Score: 5"), (200, "Rating: 2"),  # item 1: both rated
        (200, "no idea"), (500, None), (200, "Score: 4"),  # item 2: unparseable; a 500 retried, then rated
        (503, None), (503, None), (503, None),  # item 3: specificity fails after 2 retries...
        (200, None),  # ...implicitness gets a 200 that is not a chat completion (no retry)
    ]
    items = [SimpleNamespace(id=i, category=c, reply=f"reply {i}")
             for i, c in enumerate(["drug_allergy_check", "drug_allergy_check", "medication_reconciliation"])]
    scenes = {str(i): f"Nurse: scene {i}" for i in range(3)}
    with caplog.at_level(logging.DEBUG):
        out = judge_run(judge, items, scenes)
    assert [r["ratings"] for r in out["ratings"]] == [
        {"specificity": 5, "implicitness": 2}, {"specificity": "unparseable", "implicitness": 4},
        {"specificity": "error", "implicitness": "error"}]
    s = out["summary"]["specificity"]
    assert (s["mean"], s["rated"], s["unparseable"], s["error"]) == (5.0, 1, 1, 1)
    assert out["summary"]["implicitness"]["mean"] == 3.0 and out["summary"]["implicitness"]["error"] == 1
    assert waits == [0.5, 0.5, 1.0]  # backoff doubles per retry
    path, auth, body = Scripted.seen[0]
    assert path == "/v1/chat/completions" and auth == f"Bearer {KEY}" and body["model"] == "judge-model"
    assert "Nurse: scene 0" in body["messages"][1]["content"] and "reply 0" in body["messages"][1]["content"]
    assert KEY not in caplog.text

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"runs": ["BehaviorSFT"], "metrics": {}}))
    (tmp_path / "report.md").write_text("# report\n")
    text = add_judge_to_report(str(tmp_path), {"BehaviorSFT": out["summary"]}, criteria, "judge-model")
    assert "## LLM judge: judge-model" in text and "| BehaviorSFT | 5.00 | 3.00 | 3 | 1 | 2 |" in text
    saved = json.loads(report.read_text())
    assert saved["judge"]["runs"]["BehaviorSFT"]["specificity"]["mean"] == 5.0
    assert saved["judge"]["runs"]["BehaviorSFT"]["implicitness"]["by_category"] == {"drug_allergy_check": 3.0}
    assert KEY not in report.read_text() and KEY not in (tmp_path / "report.md").read_text()


def test_an_unreachable_judge_is_counted_not_raised():
    judge = Judge(JudgeSettings("http://127.0.0.1:9", "m", key_env="", retries=1, timeout_s=5), sleep=lambda s: None)
    assert judge.rate("scene", "reply") == {"specificity": "error", "implicitness": "error"}
    assert judge.failures == 2 and judge.calls == 4


def _toy_config_file(tmp_path) -> str:
    """A config file of the toy demo recipe (tiny model, a few hundred scenes): the base model is its init."""
    path = tmp_path / "toy.py"
    path.write_text("from tests.toy import toy_demo_config\n\n\n"
                    f"def get_config():\n    return toy_demo_config({str(tmp_path / 'run')!r})\n")
    return str(path)


def test_the_evaluate_cli_adds_the_judge_to_the_report(endpoint, toy_cache, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("BSFT_JAX_CACHE", toy_cache)
    monkeypatch.setenv("MY_JUDGE_KEY", KEY)
    Scripted.script = [(200, "no score here")]  # the first rating is unparseable, the rest "Score: 3"
    out = tmp_path / "eval"
    with caplog.at_level(logging.INFO):
        code = evaluate_cli.main(["evaluate", "--config", _toy_config_file(tmp_path), "--limit=4",
                                  "--baselines=explicit_instruction", "--max_new_tokens=4", "--batch_size=8",
                                  f"--out_dir={out}", f"--judge_url={endpoint}/v1", "--judge_model=judge-model",
                                  "--judge_key_env=MY_JUDGE_KEY"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    judged = report["judge"]["runs"]["explicit instruction"]
    assert report["judge"]["model"] == "judge-model" and report["judge"]["criteria"] == list(load_prompts())
    assert judged["items"] == 4 and judged["specificity"]["unparseable"] == 1 and judged["specificity"]["rated"] == 3
    assert judged["specificity"]["mean"] == 3.0 and judged["implicitness"]["rated"] == 4
    assert "## LLM judge: judge-model" in (out / "report.md").read_text()
    assert "## LLM judge: judge-model" in capsys.readouterr().out  # printed beside the table
    rows = [json.loads(line) for line in (out / "judge_explicit_instruction.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["id"] for r in rows} == {i["id"] for i in map(json.loads, open(
        out / "predictions_explicit_instruction.jsonl"))}
    assert len(Scripted.seen) == 8 and all(auth == f"Bearer {KEY}" for _, auth, _ in Scripted.seen)
    assert {body["model"] for _, _, body in Scripted.seen} == {"judge-model"}
    assert KEY not in caplog.text and KEY not in capsys.readouterr().err
    assert not any(KEY in (out / f).read_text() for f in os.listdir(out) if not f.endswith(".png"))


@pytest.mark.parametrize("args,says", [
    (["--judge_model=m"], "--judge_model needs --judge_url"),
    (["--judge_url=127.0.0.1:8000", "--judge_model=m"], "expected an http(s) URL"),
    (["--judge_url=http://127.0.0.1:8000/v1"], "--judge_url needs --judge_model"),
    (["--judge_url=http://127.0.0.1:8000/v1", "--judge_model=m", f"--judge_key_env={KEY}"],
     "--judge_key_env must name an environment variable"),
    (["--judge_url=http://127.0.0.1:8000/v1", "--judge_model=m", "--mode=loglik"], "generates none"),
])
def test_judge_flag_mistakes_are_one_line_before_any_model_loads(tmp_path, capsys, args, says):
    code = evaluate_cli.main(["evaluate", "--config", _toy_config_file(tmp_path), f"--out_dir={tmp_path / 'eval'}",
                              *args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], lines
    assert KEY not in lines[0]  # a key pasted into --judge_key_env is not echoed
