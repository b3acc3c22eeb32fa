"""Peak host memory of ``python -m bsft_jax.export``: one copy of the parameters plus about one tensor?

    python -m bench.export_memory [--hidden 1024 --layers 16 --mlp 4096]

Trains a from-scratch model of the given size for one step with the real trainer (synthetic data),
so the checkpoint is exactly what ``python -m bsft_jax.train`` writes, then exports it in fresh
subprocesses (fp32, and bf16 which restores the fp32 checkpoint directly as bf16) and reports each
one's peak RSS minus its RSS after imports, next to the size of the parameters in that dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from bench.common import append_result, print_table

_CHILD = r"""
import json, sys, time
run_dir, out, dtype = sys.argv[1:4]
import jax, transformers, orbax.checkpoint  # imports first: they are not the model
from bsft_jax.export import export_checkpoint
from bench.common import current_rss_mb, peak_rss_mb
from bsft_jax.export.read import read_tokenizer
read_tokenizer(run_dir + "/tokenizer")  # the tokenizer and transformers' modules are not the model
jax.numpy.zeros(1).block_until_ready()
base = current_rss_mb()
t = time.perf_counter()
export_checkpoint(run_dir, out, dtype=dtype, max_shard_size="200MB")
print(json.dumps({"base_mb": base, "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - t}))
"""


def train_checkpoint(run_dir: str, hidden: int, layers: int, mlp: int) -> int:
    """One training step of a model of this size; returns its parameter count."""
    import jax

    from bsft_jax.train.loop import run
    from tests.train.common import tiny_config

    cfg = tiny_config(run_dir, os.path.join(run_dir + "_tok"), **{
        "train.steps": 1, "checkpoint.every_steps": 1, "optimizer.warmup_steps": 0, "train.global_batch_size": 2,
        # mean_cov needs more old tokens than hidden dims (63 < 1024 here gives a singular covariance)
        "behavior.init": "mean_std"})
    cfg.model.arch.update(hidden_size=hidden, intermediate_size=mlp, num_layers=layers, num_heads=hidden // 64,
                          num_kv_heads=hidden // 256, head_dim=64)
    return run(cfg, devices=jax.devices()[:1]).startup["num_params"]


def measure(run_dir: str, out: str, dtype: str) -> dict:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _CHILD, run_dir, out, dtype], capture_output=True, text=True,
                          env=env, cwd=repo)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--mlp", type=int, default=4096)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        n = train_checkpoint(run_dir, args.hidden, args.layers, args.mlp)
        rows, results = [], {}
        for dtype, size in (("float32", 4), ("bfloat16", 2)):
            r = measure(run_dir, os.path.join(tmp, f"hf_{dtype}"), dtype)
            params_mb = n * size / 2**20
            extra = r["peak_mb"] - r["base_mb"]
            rows.append([dtype, f"{n / 1e6:.0f}M", params_mb, extra, extra / params_mb, r["seconds"]])
            results[dtype] = dict(r, params_mb=params_mb)
    print_table("export peak host memory (peak RSS - RSS after imports)",
                ["export dtype", "params", "params MiB (export dtype)", "peak extra MiB", "x params", "seconds"], rows)
    append_result("export_memory", vars(args), results)


if __name__ == "__main__":
    main()
