"""Every bench script runs end to end at a tiny size (so they do not rot) and records one JSON line.

Results go to a temporary file, never to bench/results.jsonl. Numbers are not checked for speed
(this is a shared CPU); only that each script measured what it says, on consistent inputs. The scripts
that measure peak memory in child processes are run by tests/integration/test_bench_children.py.
"""

from __future__ import annotations

import json
import math

import pytest

from bench import common


def _records(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def results(tmp_path):
    return str(tmp_path / "results.jsonl")


def _check_record(path: str, bench: str) -> dict:
    records = _records(path)
    assert [r["bench"] for r in records] == [bench]
    record = records[0]
    assert record["machine"]["jax"] and record["machine"]["cpu_count"] >= 1
    assert record["config"]["results"] == path
    return record["results"]


def test_train_step_tiny(results, capsys):
    from bench import train_step

    r = train_step.main(["--size", "tiny", "--steps", "1", "--blocks", "2", "--results", results])
    assert _check_record(results, "train_step") == json.loads(json.dumps(r))
    assert r["params"] > 0 and r["tokens_per_step"] == 2 * 32
    assert sorted(r["bsft"]) == ["1", str(common.QWEN2_TINY["num_layers"])]  # scanned and unrolled
    assert len(r["torch_seconds_per_step"]) == 2
    # Every loop trains the same task from random init: loss near ln(vocab) after a few steps.
    losses = [r["torch_final_loss"]] + [v["final_loss"] for v in r["bsft"].values()]
    for v in r["bsft"].values():
        assert len(v["seconds_per_step"]) == 2 and v["ratio_over_torch"]["median"] > 0
    for loss in losses:
        assert abs(loss - math.log(common.QWEN2_TINY["vocab_size"])) < 1.5, losses
    assert "| bsft_jax Trainer step (unrolled)" in capsys.readouterr().out


def test_decode_tiny(results):
    from bench import decode

    r = decode.main(["--size", "tiny", "--prompt", "16", "--new", "4", "--repeats", "1", "--results", results])
    _check_record(results, "decode")
    assert r["bsft_tokens_per_s"]["median"] > 0 and r["torch_tokens_per_s"]["median"] > 0
    assert len(r["bsft_seconds"]) == len(r["torch_seconds"]) == 1


def test_compile_time_tiny(results):
    from bench import compile_time

    r = compile_time.main(["--size", "tiny", "--layers", "2", "--batch", "2", "--seq", "16", "--decode-batch", "2",
                           "--prompt", "8", "--new", "2", "--no-demo", "--presets", "", "--results", results])
    _check_record(results, "compile_time")
    [row] = r["rows"]
    assert row["layers"] == 2
    assert row["train_compile_s"] > 0 and row["train_unrolled_compile_s"] > 0 and row["decode_compile_s"] > 0


def test_demo_recipe_matches_config():
    from bench.compile_time import demo_recipe

    arch, batch, seq = demo_recipe()
    assert (batch, seq) == (16, 256) and arch["num_layers"] == 4 and arch["hidden_size"] == 128


def test_gpu_mfu_skips_without_gpu_and_runs_on_cpu_when_asked(results, capsys):
    import jax

    from bench import gpu_mfu

    if jax.default_backend() == "cpu":
        r = gpu_mfu.main(["--results", results])
        assert "skipped" in r and "no GPU" in capsys.readouterr().out
        with pytest.raises(FileNotFoundError):
            _records(results)  # nothing recorded for a skip
    r = gpu_mfu.main(["--allow-cpu", "--models", "tiny", "--batch", "2", "--seq", "16", "--steps", "1",
                      "--matmul-size", "128", "--results", results])
    _check_record(results, "gpu_mfu")
    row = r["rows"][0]
    assert r["matmul_peak_flops"] > 0 and 0 < row["mfu"]["median"]
    assert math.isfinite(row["loss"])
    r = gpu_mfu.main(["--allow-cpu", "--impl", "torch", "--models", "tiny", "--batch", "2", "--seq", "16",
                      "--steps", "1", "--matmul-size", "128", "--results", results])
    row = r["rows"][0]
    assert row["impl"].startswith("torch") and row["params"] == r_params(results) and math.isfinite(row["loss"])


def r_params(results: str) -> int:
    """Parameter count of the first gpu_mfu record (the bsft_jax run of the same model)."""
    return next(rec for rec in _records(results) if rec["bench"] == "gpu_mfu")["results"]["rows"][0]["params"]


def test_profile_step_tiny(results):
    from bench import profile_step

    r = profile_step.main(["--size", "tiny", "--steps", "1", "--top", "5", "--results", results])
    _check_record(results, "profile_step")
    assert r["model_flops_per_step"] > 0
    assert 0 < r["bsft"]["matmul_s"] <= r["bsft"]["thunk_s"] and r["bsft"]["kinds"]
    assert r["torch"]["matmul_s"] > 0 and {"aten::mm", "aten::addmm"} & set(r["torch"]["ops"])


def test_model_flops_per_token_counts_every_projection():
    from bench.gpu_mfu import model_flops_per_token
    from bsft_jax.models.config import preset

    c = preset("qwen2_5_1_5b")
    # 6 x (matmul parameters incl. the LM head) per token, plus causal attention.
    d, f, layers = c.hidden_size, c.intermediate_size, c.num_layers
    per_layer = 2 * d * d + 2 * d * c.num_kv_heads * c.head_dim + 3 * d * f  # q, o, k, v, mlp (N*H == D here)
    matmul_params = layers * per_layer + d * c.vocab_size
    attention = 6 * 2 * layers * d * 1024 / 2
    assert model_flops_per_token(c, 1024) == pytest.approx(6 * matmul_params + attention)


def test_lora_tiny_records_and_renders(results):
    """bench.lora on the tiny Qwen2: LoRA trains far fewer parameters than full fine-tuning, in both
    libraries alike (the same adapters and token rows), and its record renders as the LoRA table."""
    from bench import lora
    from bench.tables import render_lora

    r = lora.main(["--tiny", "--impls", "jax-full,jax-lora,peft-lora", "--steps", "1", "--blocks", "1",
                   "--rank", "4", "--no-memory", "--results", results])
    _check_record(results, "lora")
    impls = r["impls"]
    assert impls["jax-lora"]["trainable"] == impls["peft-lora"]["trainable"] < impls["jax-full"]["trainable"] / 4
    assert all(math.isfinite(v["last_loss"]) for v in impls.values())
    table = render_lora(_records(results))
    assert "| bsft_jax LoRA (+ behavior rows) |" in table and "rank 4" in table


def test_round2_train_tiny(results, capsys):
    from bench import round2

    r = round2.main(["train", "--size", "tiny", "--batch", "2", "--seq", "32", "--steps", "1", "--blocks", "1",
                     "--chunk", "16", "--budget", "0.5", "--results", results])
    _check_record(results, "round2_train")
    assert r["tokens_per_step"] == 64
    for impl in ("full", "chunked"):
        assert r[impl]["tokens_per_s"]["median"] > 0 and r[impl]["ratio_over_torch"]["median"] > 0
    # Same init, same SFT batch, same updates: the chunked loss trains exactly as the full one.
    assert abs(r["losses"]["full"] - r["losses"]["chunked"]) < 1e-4, r["losses"]
    assert "| chunked" in capsys.readouterr().out


def test_sft_loss_mask_covers_the_asked_fraction():
    from bench.round2 import sft_loss_mask

    mask = sft_loss_mask(64, 200, 0.15)
    assert mask[:, -1].all() and 0.12 < mask.mean() < 0.18
