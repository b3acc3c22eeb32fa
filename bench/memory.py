"""Peak host memory: training (bsft_jax Trainer vs the transformers/torch loop) and HF import/export.

    python -m bench.memory --size 100m

Every measurement runs in a fresh process (the RSS high-water mark only grows) and reports its peak RSS minus
the RSS after imports, next to the fp32 size of the model. Training holds parameters, gradients
and two AdamW moments (4x the model) plus activations; the JAX step donates its state, so the
update is written in place. HF import/export rows come from :mod:`bench.hf_io` (streaming should
stay near 1x the model). On CPU, "device" memory is host memory, so RSS is the whole story.
"""

from __future__ import annotations

import argparse
import os

from bench.common import SIZES, append_result, print_table, run_child
from bench.train_step import DEFAULT_SHAPES

_TRAIN_CHILD = r"""
import json, os, sys, time
impl, size, batch, seq, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
import jax, numpy as np, torch, transformers  # imports first: they are not the model
from bench.common import SIZES, current_rss_mb, peak_rss_mb
from bench.train_setup import JaxTrainLoop, TorchTrainLoop, decoder_config
from bench.train_step import available_cores
torch.set_num_threads(available_cores())
jax.numpy.zeros(1).block_until_ready()
base = current_rss_mb()
t = time.perf_counter()
extra = {}
if impl == "bsft":
    loop = JaxTrainLoop(decoder_config(SIZES[size]), batch, seq)
    mem = loop.trainer.report(loop.num_params).get("memory_per_device", {})
    extra["xla_step_total_mb"] = mem.get("total_bytes_per_device", 0) / 2**20
    extra["xla_step_temp_mb"] = mem.get("temp_size_in_bytes", 0) / 2**20
else:
    loop = TorchTrainLoop(SIZES[size], batch, seq)
loop.run(steps)
print(json.dumps(dict(base_mb=base, peak_mb=peak_rss_mb(), seconds=time.perf_counter() - t, params=loop.num_params,
                      loss=loop.last_loss, **extra)))
"""


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="100m")
    p.add_argument("--batch", type=int, default=None, help="rows per step (default per size, as bench.train_step)")
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--no-hf-io", action="store_true", help="skip the HF import/export rows")
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    args = p.parse_args(argv)
    load_start = os.getloadavg()[0]  # before our own threads add to it
    batch, seq = args.batch or DEFAULT_SHAPES[args.size][0], args.seq or DEFAULT_SHAPES[args.size][1]

    results: dict = {}
    rows = []
    for impl, label in (("bsft", "train: bsft_jax Trainer (jit, donated)"), ("torch", "train: transformers + torch")):
        r = run_child(_TRAIN_CHILD, impl, args.size, str(batch), str(seq), str(args.steps))
        model_mb = r["params"] * 4 / 2**20
        r.update(extra_mb=r["peak_mb"] - r["base_mb"], model_fp32_mb=model_mb)
        r["extra_over_model"] = r["extra_mb"] / model_mb
        results[f"train_{impl}"] = r
        note = f"XLA plan {r['xla_step_total_mb']:.0f} MB" if impl == "bsft" else ""
        rows.append([label, f"{model_mb:.0f}", f"{r['extra_mb']:.0f}", f"{r['extra_over_model']:.2f}x",
                     f"{r['seconds']:.1f}", note])
    if not args.no_hf_io:
        from bench.hf_io import measure_all

        hf, hf_rows = measure_all(args.size)
        results["hf_io"] = hf
        rows += [[f"HF {row[0]}", *row[1:], ""] for row in hf_rows]
    results.update(load_avg_start=load_start, load_avg_end=os.getloadavg()[0])
    print_table(f"Peak host RSS above the post-import baseline, {args.size}, fp32, train batch {batch} x {seq}, "
                f"{args.steps} steps",
                ["operation", "model MB", "peak extra MB", "x model", "seconds", "notes"], rows)
    append_result("memory", dict(vars(args), batch=batch, seq=seq), results, args.results)
    return results


if __name__ == "__main__":
    main()
