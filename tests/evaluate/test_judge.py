"""The LLM-judge hook against a scripted OpenAI-compatible endpoint on loopback: ratings parsed, garbage and
errors counted (with retries and backoff), the evaluation never fails, the key sent and never logged, and
the report gains the judge section. (Against the project's own server: tests/serve/test_judge_server.py.)"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

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
