"""bench/serve_load.py at a tiny size against the shared server (a smoke check: figures present and sane)."""

from __future__ import annotations

import json

from bench import serve_load

from .conftest import API_KEY


def test_serve_load_bench_measures_each_level(server, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_KEY", API_KEY)
    out = tmp_path / "load.json"
    assert serve_load.main(["--url", server.url, "--clients", "1,2", "--requests", "1", "--max_tokens", "4",
                            "--api_key_env", "BENCH_KEY", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    levels = report["servers"][server.url]["levels"]
    assert [lv["clients"] for lv in levels] == [1, 2] and [lv["requests"] for lv in levels] == [1, 2]
    assert all(lv["output_tokens_per_s"] > 0 and 0 < lv["p50_s"] <= lv["p99_s"] for lv in levels)
    assert report["servers"][server.url]["model"] == "bsft"
