"""The bench scripts that measure peak memory in fresh child processes (bench.common.run_child), at a tiny
size: moved from tests/bench/test_bench.py, whose helpers they share."""

from __future__ import annotations

import math

import pytest

from tests.bench.test_bench import _check_record


@pytest.fixture
def results(tmp_path):
    return str(tmp_path / "results.jsonl")


def test_memory_and_hf_io_tiny(results):
    from bench import memory

    r = memory.main(["--size", "tiny", "--steps", "1", "--results", results])
    _check_record(results, "memory")
    for key in ("train_bsft", "train_torch"):
        assert r[key]["peak_mb"] >= r[key]["base_mb"] > 0 and math.isfinite(r[key]["loss"])
    assert r["train_bsft"]["params"] == r["train_torch"]["params"]
    for mode in ("bsft_load", "torch_load", "bsft_save"):
        assert r["hf_io"][mode]["peak_mb"] >= r["hf_io"][mode]["base_mb"] > 0
