"""Train-step throughput: bsft_jax's Trainer step vs a transformers/PyTorch eager loop (fp32, CPU).

    python -m bench.train_step --size 100m          # ~100M-param Qwen2, batch 4 x 256 tokens
    python -m bench.train_step --size demo          # the demo size class, batch 16 x 256 tokens

Same model architecture and initial-weight scale, same batch of tokens and targets, same AdamW
(lr schedule, betas, eps, weight decay on projection matrices only, global-norm clipping at 1.0)
and the same masked cross-entropy. bsft_jax runs twice: with the default ``scan_unroll=1`` (one
block in the program) and fully unrolled (``scan_unroll=num_layers``, ``--unroll``). All run in
INTERLEAVED blocks of ``--steps`` updates after one warm-up block each, so that load changes on a
shared machine hit them alike; each ratio is taken per round of neighbouring blocks and reported as
median (min-max). torch runs with as many intra-op threads as JAX's CPU client uses (all cores
available to this process).
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench.common import SIZES, append_result, print_table, summary
from bench.train_setup import OPTIMIZER, JaxTrainLoop, TorchTrainLoop, decoder_config

DEFAULT_SHAPES = {"100m": (4, 256), "demo": (16, 256), "tiny": (2, 32), "smollm2_135m": (4, 512),
                  "qwen2_5_0_5b": (4, 512)}


def available_cores() -> int:
    """Cores this process may run on (what XLA's CPU client sizes its thread pool to)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="100m")
    p.add_argument("--batch", type=int, default=None, help="rows per step (default per size)")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default per size)")
    p.add_argument("--steps", type=int, default=2, help="updates per timed block")
    p.add_argument("--blocks", type=int, default=5, help="timed blocks per implementation (interleaved)")
    p.add_argument("--unroll", default="1,full", help="bsft_jax scan_unroll variants (ints or 'full')")
    p.add_argument("--torch-attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--torch-adamw", default="fused", choices=["fused", "foreach", "for-loop"])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: available cores)")
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    args = p.parse_args(argv)
    load_start = os.getloadavg()[0]  # before our own threads add to it
    batch, seq = args.batch or DEFAULT_SHAPES[args.size][0], args.seq or DEFAULT_SHAPES[args.size][1]

    import torch

    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    arch = SIZES[args.size]

    n_layers = arch["num_layers"]
    unrolls = [n_layers if u == "full" else int(u) for u in args.unroll.split(",") if u]
    ours = {u: JaxTrainLoop(decoder_config(arch, scan_unroll=u), batch, seq) for u in unrolls}
    theirs = TorchTrainLoop(arch, batch, seq, attn=args.torch_attn, adamw=args.torch_adamw)
    for loop in ours.values():
        assert loop.num_params == theirs.num_params, (loop.num_params, theirs.num_params)
        loop.run(args.steps)  # warm-up: first-touch allocations, thread pools
    theirs.run(args.steps)
    jax_s: dict[int, list[float]] = {u: [] for u in unrolls}
    torch_s: list[float] = []
    for _ in range(args.blocks):
        for u, loop in ours.items():
            jax_s[u].append(loop.run(args.steps) / args.steps)
        torch_s.append(theirs.run(args.steps) / args.steps)
    tokens = theirs.tokens_per_step
    torch_tps = summary([tokens / s for s in torch_s])
    results = {"params": theirs.num_params, "tokens_per_step": tokens, "torch_tokens_per_s": torch_tps,
               "torch_seconds_per_step": torch_s, "torch": theirs.settings, "torch_final_loss": theirs.last_loss,
               "bsft": {}, "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0]}
    rows = []
    for u in unrolls:
        tps = summary([tokens / s for s in jax_s[u]])
        ratio = summary([t / j for j, t in zip(jax_s[u], torch_s)])  # tokens/s ratio = torch s / jax s
        results["bsft"][str(u)] = {"tokens_per_s": tps, "seconds_per_step": jax_s[u], "ratio_over_torch": ratio,
                                   "compile_seconds": ours[u].compile_seconds, "final_loss": ours[u].last_loss}
        label = "scanned, scan_unroll=1" if u == 1 else ("unrolled" if u >= n_layers else f"scan_unroll={u}")
        rows.append([f"bsft_jax Trainer step ({label})", f"{tps['median']:.0f}",
                     f"{tps['min']:.0f}-{tps['max']:.0f}", f"{statistics.median(jax_s[u]):.3f}",
                     f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})",
                     f"compile {ours[u].compile_seconds:.1f} s"])
    rows.append([f"transformers + torch eager ({args.torch_attn}, AdamW {args.torch_adamw})",
                 f"{torch_tps['median']:.0f}", f"{torch_tps['min']:.0f}-{torch_tps['max']:.0f}",
                 f"{statistics.median(torch_s):.3f}", "1", f"{theirs.settings['threads']} threads"])
    print_table(f"Train step, {args.size} ({theirs.num_params / 1e6:.1f}M params), batch {batch} x {seq} tokens, fp32, "
                f"{args.blocks} interleaved rounds x {args.steps} steps, load avg at start {load_start:.2f}",
                ["implementation", "tokens/s (median)", "min-max", "s/step (median)", "ratio vs torch (min-max)",
                 "notes"], rows)
    config = dict(vars(args), batch=batch, seq=seq, threads=threads, optimizer=OPTIMIZER)
    append_result("train_step", config, results, args.results)
    return results


if __name__ == "__main__":
    main()
