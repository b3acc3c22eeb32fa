"""Model FLOPs utilisation (MFU) of the bf16 train step on a GPU, against the GPU's measured matmul peak.

    python -m bench.gpu_mfu                                   # Qwen2.5-0.5B and 1.5B shapes, batch 4 x 2048
    python -m bench.gpu_mfu --models qwen2_5_1_5b --batch 8 --remat none
    python -m bench.gpu_mfu --allow-cpu --models tiny --batch 2 --seq 32 --matmul-size 256   # rot test on CPU

Without an accelerator it prints a message and exits 0 (nothing is recorded) unless ``--allow-cpu``.

Peak: the best of several timed ``jnp.dot`` of two [n, n] bf16 matrices (fp32 accumulation
inside the GEMM, bf16 out), 2 n^3 FLOPs each. Step: bsft_jax's real Trainer step (compute in bf16,
fp32 master weights and AdamW state, donated), random weights, one synthetic batch of full rows.
Model FLOPs per step = 3 x forward (backward = 2 x forward), forward = 2 x tokens x (every
projection matrix incl. the LM head) + causal attention 2 x 2 x L x T^2/2 x N x H per row
(the work the model needs: rematerialisation and the masked upper triangle are not counted).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench.common import SIZES, append_result, print_table, summary


def matmul_peak_flops(n: int, *, repeats: int = 10) -> float:
    """Best measured FLOP/s of a bf16 [n, n] x [n, n] matmul on the default device."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def model_flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token (3 x forward), causal attention counted once (see the module docstring)."""
    c = config
    d, n, k, h, f = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size
    per_layer = d * n * h + 2 * d * k * h + n * h * d + 3 * d * f  # q, k, v, o, gate, up, down
    matmul = 2 * (c.num_layers * per_layer + d * c.vocab_size)
    attention = 2 * 2 * c.num_layers * n * h * seq_len / 2  # QK^T and PV over the causal half, per token
    return 3 * (matmul + attention)


def model_config(name: str, remat: str):
    """A bf16-compute, fp32-parameter DecoderConfig from a bsft_jax preset or a bench SIZES name."""
    from bench.train_setup import decoder_config
    from bsft_jax.models.config import PRESETS, preset

    numerics = dict(dtype="bfloat16", param_dtype="float32", logits_dtype="float32", remat=remat)
    if name in PRESETS:
        return preset(name, **numerics)
    if name in SIZES:
        return decoder_config(SIZES[name], **numerics)
    raise SystemExit(f"--models: unknown model {name!r}; use a preset ({sorted(PRESETS)}) or one of {sorted(SIZES)}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="qwen2_5_0_5b,qwen2_5_1_5b", help="comma-separated presets or bench sizes")
    p.add_argument("--batch", type=int, default=4, help="rows per step (4 x 2048 keeps 1.5B + AdamW in 80 GB)")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--remat", default="dots", choices=["none", "dots", "full"])
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (after one warm-up step)")
    p.add_argument("--matmul-size", type=int, default=8192)
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU anyway (tests; numbers mean nothing)")
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    args = p.parse_args(argv)

    import jax

    from bench.train_setup import JaxTrainLoop

    backend = jax.default_backend()
    if backend == "cpu" and not args.allow_cpu:
        msg = "bench.gpu_mfu: no GPU/TPU found (jax backend is 'cpu'); skipped. Pass --allow-cpu to run anyway."
        print(msg)
        return {"skipped": msg}
    device = jax.devices()[0]
    peak = matmul_peak_flops(args.matmul_size)
    rows, records = [], []
    for name in [m for m in args.models.split(",") if m]:
        config = model_config(name, args.remat)
        loop = JaxTrainLoop(config, args.batch, args.seq)
        loop.run(1)  # warm-up
        seconds = [loop.run(1) for _ in range(args.steps)]
        step = summary(seconds)
        flops = model_flops_per_token(config, args.seq) * loop.tokens_per_step
        mfu = [flops / s / peak for s in seconds]
        record = dict(model=name, params=loop.num_params, batch=args.batch, seq=args.seq, remat=args.remat,
                      step_seconds=step, model_flops_per_step=flops, mfu=summary(mfu),
                      tokens_per_s=loop.tokens_per_step / step["median"], compile_seconds=loop.compile_seconds,
                      loss=loop.last_loss)
        records.append(record)
        rows.append([name, f"{loop.num_params / 1e9:.2f}B", f"{args.batch}x{args.seq}", args.remat,
                     f"{step['median']:.3f}", f"{record['tokens_per_s']:.0f}",
                     f"{flops / step['median'] / 1e12:.1f}", f"{100 * statistics.median(mfu):.1f}%",
                     f"{100 * min(mfu):.1f}-{100 * max(mfu):.1f}%"])
        del loop
    print_table(f"bf16 train-step MFU on {device.device_kind} ({backend}); measured bf16 matmul peak "
                f"{peak / 1e12:.1f} TFLOP/s (n={args.matmul_size})",
                ["model", "params", "batch", "remat", "s/step", "tokens/s", "model TFLOP/s", "MFU", "min-max"], rows)
    results = {"device": device.device_kind, "backend": backend, "matmul_peak_flops": peak, "rows": records,
               "load_avg_end": os.getloadavg()[0]}
    append_result("gpu_mfu", vars(args), results, args.results)
    return results


if __name__ == "__main__":
    main()
