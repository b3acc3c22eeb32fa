"""Round 2 performance: the chunked loss and the per-layer decode path on real architectures (CPU, fp32).

    python -m bench.round2 train  --size smollm2_135m                   # tokens/s: full loss, chunked, torch
    python -m bench.round2 train  --size qwen2_5_0_5b --batch 2 --seq 512
    python -m bench.round2 memory --size qwen2_5_0_5b --batch 4 --seq 512  # peak RSS, each in a fresh process
    python -m bench.round2 decode --size smollm2_135m --batch 8          # = bench.decode on that shape

Sizes are ``bench.common.SIZES``: ``smollm2_135m`` (SmolLM2-135M: llama, 30 layers, tied 49k vocab) and
``qwen2_5_0_5b`` (Qwen2.5-0.5B: 24 layers, tied 152k vocab), with random weights: a step's time and
memory do not depend on the weight values (the greedy decode runs its full budget with no EOS stop).

SFT batches: every row has its loss mask on one trailing span (the assistant reply) covering
``--loss-fraction`` of the row (default 0.15: the 10-20% typical of SFT); torch gets the same mask.
"before" is bsft_jax with ``train.loss_impl="full"`` ([B, T, V] fp32 logits), "after" the default
``chunked`` loss (``--budget`` of the positions gathered, ``--chunk`` rows of logits at a time).
Implementations run in INTERLEAVED blocks after a warm-up block each; ratios per round, median (min-max).
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np

from bench.common import SIZES, append_result, print_table, run_child, summary

IMPLS = ("full", "chunked", "torch")


def sft_loss_mask(batch: int, seq: int, fraction: float, seed: int = 0) -> np.ndarray:
    """[B, T] int32: one trailing reply span per row, ``fraction`` of the row on average (at least 1 token)."""
    rng = np.random.RandomState(seed)
    mask = np.zeros((batch, seq), np.int32)
    for i in range(batch):
        n = int(np.clip(round(rng.uniform(0.5, 1.5) * fraction * seq), 1, seq))
        mask[i, seq - n:] = 1
    return mask


def make_loop(impl: str, size: str, batch: int, seq: int, args: argparse.Namespace):
    """A bench.train_setup loop for ``impl`` with the SFT loss mask in place of the all-ones one."""
    from bench.train_setup import JaxTrainLoop, TorchTrainLoop, decoder_config

    mask = sft_loss_mask(batch, seq, args.loss_fraction)
    if impl == "torch":
        import torch

        loop = TorchTrainLoop(SIZES[size], batch, seq)
        loop.batch["loss_mask"] = torch.from_numpy(mask).long()
        return loop
    import jax

    options = dict(loss_impl=impl, loss_chunk=args.chunk, loss_budget=args.budget if impl == "chunked" else 1.0)
    remat = getattr(args, "remat", "none")
    loop = JaxTrainLoop(decoder_config(SIZES[size], remat=remat), batch, seq, trainer_options=options)
    loop.batch["loss_mask"] = jax.device_put(mask, loop.trainer.batch_sharding)
    return loop


def train(args: argparse.Namespace) -> dict:
    """Interleaved train-step timing of the selected implementations."""
    import torch

    from bench.train_step import available_cores

    torch.set_num_threads(available_cores())
    impls = args.impls.split(",")
    loops = {i: make_loop(i, args.size, args.batch, args.seq, args) for i in impls}
    for loop in loops.values():
        loop.run(args.steps)  # warm-up
    seconds: dict[str, list[float]] = {i: [] for i in impls}
    for _ in range(args.blocks):
        for i, loop in loops.items():
            seconds[i].append(loop.run(args.steps) / args.steps)
    tokens = args.batch * args.seq
    results = {"tokens_per_step": tokens, "losses": {i: loops[i].last_loss for i in impls}}
    rows = []
    for i in impls:
        tps = summary([tokens / s for s in seconds[i]])
        entry = {"tokens_per_s": tps, "seconds_per_step": seconds[i]}
        note = ""
        if "torch" in seconds and i != "torch":
            entry["ratio_over_torch"] = r = summary([t / s for s, t in zip(seconds[i], seconds["torch"], strict=True)])
            note = f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
        results[i] = entry
        rows.append([i, f"{tps['median']:.0f}", f"{tps['min']:.0f}-{tps['max']:.0f}",
                     f"{statistics.median(seconds[i]):.3f}", note or "1" if i == "torch" else note])
    print_table(f"Train step, {args.size}, batch {args.batch} x {args.seq}, loss on ~{args.loss_fraction:.0%} of "
                f"positions, fp32, load avg {os.getloadavg()[0]:.1f}",
                ["implementation", "tokens/s (median)", "min-max", "s/step", "ratio vs torch"], rows)
    return results


_MEMORY_CHILD = r"""
import json, sys, argparse
impl, size, batch, seq, steps, fraction, chunk, budget, remat = sys.argv[1:10]
import jax, numpy as np, torch, transformers  # imports first: they are not the model
from bench.common import current_rss_mb, peak_rss_mb
from bench.round2 import make_loop
from bench.train_step import available_cores
torch.set_num_threads(available_cores())
jax.numpy.zeros(1).block_until_ready()
base = current_rss_mb()
args = argparse.Namespace(loss_fraction=float(fraction), chunk=int(chunk), budget=float(budget), remat=remat)
loop = make_loop(impl, size, int(batch), int(seq), args)
extra = {}
if impl != "torch":
    mem = loop.trainer.report(loop.num_params).get("memory_per_device", {})
    extra = {"xla_total_mb": mem.get("total_bytes_per_device", 0) / 2**20,
             "xla_temp_mb": mem.get("temp_size_in_bytes", 0) / 2**20}
loop.run(int(steps))
print(json.dumps(dict(base_mb=base, peak_mb=peak_rss_mb(), params=loop.num_params, loss=loop.last_loss, **extra)))
"""


def memory(args: argparse.Namespace) -> dict:
    """Peak RSS above the post-import baseline, one fresh process per implementation."""
    results, rows = {}, []
    for impl in args.impls.split(","):
        r = run_child(_MEMORY_CHILD, impl, args.size, str(args.batch), str(args.seq), str(args.steps),
                      str(args.loss_fraction), str(args.chunk), str(args.budget), args.remat)
        r["extra_mb"] = r["peak_mb"] - r["base_mb"]
        results[impl] = r
    torch_mb = results.get("torch", {}).get("extra_mb")
    for impl, r in results.items():
        ratio = f"{r['extra_mb'] / torch_mb:.2f}x" if torch_mb else ""
        xla = f"XLA plan {r['xla_total_mb']:.0f} MB (temp {r['xla_temp_mb']:.0f})" if "xla_total_mb" in r else ""
        rows.append([impl, f"{r['params'] * 4 / 2**20:.0f}", f"{r['extra_mb']:.0f}", ratio, xla])
    print_table(f"Peak train memory (RSS above baseline), {args.size}, batch {args.batch} x {args.seq}, fp32",
                ["implementation", "model fp32 MB", "peak extra MB", "vs torch", "notes"], rows)
    return results


def main(argv: list[str] | None = None) -> dict:
    """Runs one of train / memory / decode; prints a Markdown table; appends to bench/results.jsonl."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["train", "memory", "decode"])
    p.add_argument("--size", choices=sorted(SIZES), default="smollm2_135m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {IMPLS}")
    p.add_argument("--loss-fraction", type=float, default=0.15, help="share of positions with loss")
    p.add_argument("--chunk", type=int, default=256, help="chunked loss: rows of logits at a time")
    p.add_argument("--budget", type=float, default=0.5, help="chunked loss: share of positions gathered")
    p.add_argument("--remat", default="none", choices=["none", "dots", "full"], help="bsft_jax: model.remat")
    p.add_argument("--steps", type=int, default=2, help="updates per timed block")
    p.add_argument("--blocks", type=int, default=3, help="interleaved timed blocks per implementation")
    p.add_argument("--new", type=int, default=64, help="decode: new tokens per prompt")
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    args = p.parse_args(argv)
    if args.what == "decode":
        from bench import decode

        return decode.main(["--size", args.size, "--batch", str(args.batch), "--new", str(args.new),
                            "--prompt", "128", "--repeats", str(args.blocks)]
                           + (["--results", args.results] if args.results else []))
    load_start = os.getloadavg()[0]
    results = train(args) if args.what == "train" else memory(args)
    results.update(load_avg_start=load_start, load_avg_end=os.getloadavg()[0])
    append_result(f"round2_{args.what}", vars(args), results, args.results)
    return results


if __name__ == "__main__":
    main()
