"""The evaluator's LLM-judge hook end to end against the project's own server (the toy run as the judge): the
plumbing, the key from the environment, parsing and the summary; the toy's ratings are worth nothing."""

from __future__ import annotations

from types import SimpleNamespace

from bsft_jax.evaluate.judge import Judge, JudgeSettings, judge_run

from .conftest import API_KEY


def test_the_judge_hook_rates_replies_through_our_server(server, monkeypatch):
    monkeypatch.setenv("BSFT_TEST_JUDGE_KEY", API_KEY)
    judge = Judge(JudgeSettings(server.url, "bsft", key_env="BSFT_TEST_JUDGE_KEY", retries=0, max_tokens=8))
    items = [SimpleNamespace(id="a", category="drug_allergy_check", reply="Flag: allergy")]
    out = judge_run(judge, items, {"a": "Nurse: allergic to penicillin.\nDoctor: start amoxicillin."})
    ratings = out["ratings"][0]["ratings"]
    assert set(ratings) == {"specificity", "implicitness"}
    assert all(isinstance(r, int) or r == "unparseable" for r in ratings.values()), ratings  # no call failed
    assert judge.failures == 0 and judge.calls == 2
    summary = out["summary"]["specificity"]
    assert summary["rated"] + summary["unparseable"] == 1 and summary["error"] == 0
    assert API_KEY not in server.log()
