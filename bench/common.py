"""Shared by the benchmarks: machine/version info, robust timing, a table printer, a JSONL log."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.jsonl")

# About 100M parameters, Qwen2 architecture (q/k/v biases), tied embeddings.
QWEN2_100M = dict(model_type="qwen2", vocab_size=32_000, hidden_size=768, intermediate_size=2048, num_layers=12,
                  num_heads=12, num_kv_heads=4, head_dim=64, qkv_bias=True, tie_word_embeddings=True,
                  rope_theta=1_000_000.0, rms_norm_eps=1e-6)
# The demo model's size class (a few M parameters).
QWEN2_DEMO = dict(model_type="qwen2", vocab_size=4_096, hidden_size=256, intermediate_size=768, num_layers=4,
                  num_heads=4, num_kv_heads=2, head_dim=64, qkv_bias=True, tie_word_embeddings=True,
                  rope_theta=10_000.0, rms_norm_eps=1e-6)
# Tiny, for the test that keeps the scripts from rotting.
QWEN2_TINY = dict(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True, tie_word_embeddings=True,
                  rope_theta=10_000.0, rms_norm_eps=1e-6)
# Real architectures (random weights: step time and memory do not depend on the values).
SMOLLM2_135M = dict(model_type="llama", vocab_size=49_152, hidden_size=576, intermediate_size=1536, num_layers=30,
                    num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True, rope_theta=100_000.0,
                    rms_norm_eps=1e-5)
QWEN2_5_0_5B = dict(model_type="qwen2", vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_layers=24,
                    num_heads=14, num_kv_heads=2, head_dim=64, qkv_bias=True, tie_word_embeddings=True,
                    rope_theta=1_000_000.0, rms_norm_eps=1e-6)
SIZES = {"100m": QWEN2_100M, "demo": QWEN2_DEMO, "tiny": QWEN2_TINY, "smollm2_135m": SMOLLM2_135M,
         "qwen2_5_0_5b": QWEN2_5_0_5B}


def hf_qwen2_config(arch: dict[str, Any]):
    """The transformers Qwen2Config for one of the SIZES."""
    from bsft_jax.models.config import DecoderConfig

    return hf_config_from_decoder(DecoderConfig(**arch, max_position_embeddings=4096))


def hf_config_from_decoder(config: Any):
    """The transformers config of the architecture a bsft_jax DecoderConfig describes (presets, SIZES)."""
    from transformers import AutoConfig

    hf = dict(config.to_hf(dtype="float32"))
    hf.pop("architectures", None)
    return AutoConfig.for_model(hf.pop("model_type"), **hf)


def machine_info() -> dict[str, Any]:
    """Where and with what a result was measured."""
    import jax

    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()][:8],
    }
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__,
                    torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    info.update(cpu_info())
    try:
        repo = os.path.dirname(RESULTS)
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=repo).stdout.strip()
        # Uncommitted library changes make "git" an approximation of what was measured.
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--", "bsft_jax", "configs"],
                                                capture_output=True, text=True, cwd=repo).stdout.strip())
    except OSError:
        pass
    return info


def cpu_info(path: str = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU model and its matmul-relevant ISA flags (AMX, AVX-512) from /proc/cpuinfo; {} off Linux."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return {}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags_line = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")), "")
    flags = sorted({f for f in flags_line.split() if f.startswith(("amx", "avx512"))})
    return {"cpu_model": model, "cpu_flags": flags, "amx": any(f.startswith("amx") for f in flags)}


def timed(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` calls (fn must block until done)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def summary(xs: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max) of a sample."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def peak_rss_mb() -> float:
    """Peak resident set size of this process's own address space so far, in MiB.

    VmHWM from /proc (Linux), not ``ru_maxrss``: Linux carries ru_maxrss across exec, so a child
    would report its parent's RSS at fork time whenever that was larger.
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):  # not Linux: the rusage figure (KiB on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_child(code: str, *args: str) -> dict[str, Any]:
    """Runs ``python -c code args...`` from the repo root in a fresh process; returns its last stdout line as JSON.

    Peak-memory measurements need a fresh process each (the high-water mark never goes down).
    """
    repo = os.path.dirname(os.path.dirname(RESULTS))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=repo)
    if proc.returncode:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table on stdout (pasteable into BENCHMARKS.md)."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(fmt(v) for v in row) + " |")
    sys.stdout.flush()


def append_result(name: str, config: dict[str, Any], results: dict[str, Any], path: str | None = None) -> None:
    """Appends one JSON line {bench, machine, config, results} to bench/results.jsonl (or ``path``)."""
    record = {"bench": name, "machine": machine_info(), "config": config, "results": results}
    with open(path or RESULTS, "a") as f:
        f.write(json.dumps(record) + "\n")
