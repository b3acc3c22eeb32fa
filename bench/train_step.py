"""Train-step throughput: bsft_jax's Trainer step vs a transformers/PyTorch eager loop (fp32, CPU).

    python -m bench.train_step --size 100m          # ~100M-param Qwen2, batch 4 x 256 tokens
    python -m bench.train_step --size demo          # the demo size class, batch 16 x 256 tokens

Same model architecture and initial-weight scale, same batch of tokens and targets, same AdamW
(lr schedule, betas, eps, weight decay on projection matrices only, global-norm clipping at 1.0)
and the same masked cross-entropy. JAX and torch run in INTERLEAVED blocks of ``--steps`` updates
after one warm-up block each, so that load changes on a shared machine hit both alike; the ratio
is taken per pair of neighbouring blocks and reported as median (min-max). torch runs with as many
intra-op threads as JAX's CPU client uses (all cores available to this process).
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench.common import SIZES, append_result, print_table, summary
from bench.train_setup import OPTIMIZER, JaxTrainLoop, TorchTrainLoop, decoder_config

DEFAULT_SHAPES = {"100m": (4, 256), "demo": (16, 256), "tiny": (2, 32)}


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
    p.add_argument("--torch-attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--torch-adamw", default="fused", choices=["fused", "foreach", "for-loop"])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: available cores)")
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    args = p.parse_args(argv)
    batch, seq = args.batch or DEFAULT_SHAPES[args.size][0], args.seq or DEFAULT_SHAPES[args.size][1]

    import torch

    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    arch = SIZES[args.size]

    ours = JaxTrainLoop(decoder_config(arch), batch, seq)
    theirs = TorchTrainLoop(arch, batch, seq, attn=args.torch_attn, adamw=args.torch_adamw)
    assert ours.num_params == theirs.num_params, (ours.num_params, theirs.num_params)
    ours.run(args.steps)  # warm-up: first-touch allocations, thread pools
    theirs.run(args.steps)
    jax_s, torch_s = [], []
    for _ in range(args.blocks):
        jax_s.append(ours.run(args.steps) / args.steps)
        torch_s.append(theirs.run(args.steps) / args.steps)
    tokens = ours.tokens_per_step
    ratios = [t / j for j, t in zip(jax_s, torch_s)]  # tokens/s ratio = torch seconds / jax seconds
    jax_tps = summary([tokens / s for s in jax_s])
    torch_tps = summary([tokens / s for s in torch_s])
    ratio = summary(ratios)
    results = {
        "params": ours.num_params, "tokens_per_step": tokens,
        "bsft_tokens_per_s": jax_tps, "torch_tokens_per_s": torch_tps, "ratio_bsft_over_torch": ratio,
        "bsft_seconds_per_step": jax_s, "torch_seconds_per_step": torch_s,
        "bsft_compile_seconds": ours.compile_seconds, "torch": theirs.settings,
        "final_loss": {"bsft": ours.last_loss, "torch": theirs.last_loss},
        "load_avg": os.getloadavg(),
    }
    rows = [
        ["bsft_jax Trainer step (jit, donated)", f"{jax_tps['median']:.0f}",
         f"{jax_tps['min']:.0f}-{jax_tps['max']:.0f}", f"{statistics.median(jax_s):.3f}",
         f"compile {ours.compile_seconds:.1f} s"],
        [f"transformers + torch eager ({args.torch_attn}, AdamW {args.torch_adamw})", f"{torch_tps['median']:.0f}",
         f"{torch_tps['min']:.0f}-{torch_tps['max']:.0f}", f"{statistics.median(torch_s):.3f}",
         f"{theirs.settings['threads']} threads"],
        ["ratio bsft/torch (per block pair)", f"{ratio['median']:.2f}", f"{ratio['min']:.2f}-{ratio['max']:.2f}", "-",
         f"{args.blocks} pairs x {args.steps} steps"],
    ]
    print_table(f"Train step, {args.size} ({ours.num_params / 1e6:.1f}M params), batch {batch} x {seq} tokens, fp32, "
                f"load avg {results['load_avg'][0]:.2f}",
                ["implementation", "tokens/s (median)", "min-max", "s/step (median)", "notes"], rows)
    config = dict(vars(args), batch=batch, seq=seq, threads=threads, optimizer=OPTIMIZER)
    append_result("train_step", config, results, args.results)
    return results


if __name__ == "__main__":
    main()
