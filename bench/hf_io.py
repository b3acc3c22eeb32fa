"""Peak host memory of HF import/export: does streaming keep one copy of the model?

    python -m bench.hf_io --size 100m

Each measurement runs in a fresh subprocess and reports its peak RSS (VmHWM) minus the RSS
after imports, next to the size of the weights: streaming should stay near 1x the model (the
device copy, which on CPU lives in host RAM) plus one tensor, not 2x. transformers'
``from_pretrained`` is measured the same way as the reference.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from bench.common import SIZES, append_result, hf_qwen2_config, print_table, run_child

_CHILD = r"""
import json, os, sys, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
mode, folder, out = sys.argv[1], sys.argv[2], sys.argv[3]
import jax, numpy as np, torch, transformers  # imports first: they are not the model
from bsft_jax import load_hf, save_hf
from bench.common import current_rss_mb, peak_rss_mb
jax.numpy.zeros(1).block_until_ready()
base = current_rss_mb()
t = time.perf_counter()
if mode == "bsft_load":
    model, config = load_hf(folder, dtype="float32")
    jax.block_until_ready(jax.tree.leaves(jax.tree.map(lambda x: x, model.embed.value)))
elif mode == "bsft_save":
    model, config = load_hf(folder, dtype="float32")
    base = current_rss_mb()
    t = time.perf_counter()
    save_hf(model, config, out, max_shard_size="100MB", overwrite=True)
elif mode == "torch_load":
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
print(json.dumps({"base_mb": base, "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - t}))
"""


def measure(mode: str, folder: str, out: str) -> dict:
    """Peak RSS of one HF import/export ``mode`` in a fresh process (``base_mb``, ``peak_mb``, ``seconds``)."""
    return run_child(_CHILD, mode, folder, out)


def measure_all(size: str) -> tuple[dict, list[list[str]]]:
    """All three operations for one of the SIZES: (results, table rows)."""
    import torch
    from transformers import Qwen2ForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(hf_qwen2_config(SIZES[size]))
        src = os.path.join(tmp, "src")
        model.save_pretrained(src, max_shard_size="100MB")
        n_params = sum(p.numel() for p in model.parameters())
        del model
        model_mb = n_params * 4 / 2**20
        rows, results = [], {"params": n_params, "model_fp32_mb": model_mb}
        for mode in ("bsft_load", "torch_load", "bsft_save"):
            r = measure(mode, src, os.path.join(tmp, "out"))
            extra = r["peak_mb"] - r["base_mb"]
            results[mode] = dict(r, extra_mb=extra, extra_over_model=extra / model_mb)
            rows.append([mode, f"{model_mb:.0f}", f"{extra:.0f}", f"{extra / model_mb:.2f}x", f"{r['seconds']:.2f}"])
    return results, rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", choices=sorted(SIZES), default="100m")
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    args = p.parse_args(argv)
    results, rows = measure_all(args.size)
    n_params = results["params"]
    print_table(f"HF import/export peak host memory ({args.size}, {n_params / 1e6:.1f}M params, fp32)",
                ["operation", "model MB", "peak RSS above baseline MB", "x model", "seconds"], rows)
    append_result("hf_io", {"size": args.size}, results, args.results)
    return results


if __name__ == "__main__":
    main()
