"""Model FLOPs utilisation (MFU) of the bf16 train step on a GPU, against the GPU's measured matmul peak.

    python -m bench.gpu_mfu                                   # Qwen2.5-0.5B and 1.5B shapes, batch 4 x 2048
    python -m bench.gpu_mfu --models qwen2_5_1_5b --batch 8 --remat none
    python -m bench.gpu_mfu --attention cudnn                 # cuDNN flash attention (DecoderConfig.attention_impl)
    python -m bench.gpu_mfu --impl torch                      # the transformers + torch reference, same FLOP count
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


def matmul_peak_flops(n: int, *, repeats: int = 10, chain: int = 8) -> float:
    """Best measured FLOP/s of bf16 [n, n] x [n, n] matmuls on the default device.

    One jitted call runs ``chain`` independent products (distinct left operands, so none is shared
    or hoisted): the per-call dispatch and sync cost is spread over them, as in a train step.
    """
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), chain + 1)
    xs = [jax.random.normal(k, (n, n), jnp.bfloat16) for k in keys[:chain]]
    b = jax.random.normal(keys[-1], (n, n), jnp.bfloat16)
    mm = jax.jit(lambda xs, y: [x @ y for x in xs])
    jax.block_until_ready(mm(xs, b))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(mm(xs, b))
        best = min(best, time.perf_counter() - t0)
    return chain * 2 * n**3 / best


def model_flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token (3 x forward), causal attention counted once (see the module docstring)."""
    c = config
    d, n, k, h, f = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size
    per_layer = d * n * h + 2 * d * k * h + n * h * d + 3 * d * f  # q, k, v, o, gate, up, down
    matmul = 2 * (c.num_layers * per_layer + d * c.vocab_size)
    attention = 2 * 2 * c.num_layers * n * h * seq_len / 2  # QK^T and PV over the causal half, per token
    return 3 * (matmul + attention)


def peak_device_gb(impl: str, device) -> float | None:
    """Peak device memory in use so far (GB), from the framework's allocator; None where not reported."""
    if impl == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None
    stats = device.memory_stats() or {}
    return stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats else None


def model_config(name: str, remat: str, attention: str = "auto"):
    """A bf16-compute, fp32-parameter DecoderConfig from a bsft_jax preset or a bench SIZES name."""
    from bench.train_setup import decoder_config
    from bsft_jax.models.config import PRESETS, preset

    numerics = dict(dtype="bfloat16", param_dtype="float32", logits_dtype="float32", remat=remat,
                    attention_impl=attention)
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
    p.add_argument("--attention", default="auto", choices=["einsum", "cudnn", "auto"],
                   help="bsft_jax attention kernel (DecoderConfig.attention_impl)")
    p.add_argument("--impl", default="bsft", choices=["bsft", "torch"],
                   help="bsft: bsft_jax's Trainer step; torch: transformers + torch AdamW (fused), fp32 weights, "
                        "bf16 autocast, sdpa attention, no checkpointing (--remat ignored); run it in its own "
                        "process (JAX preallocates most of the GPU)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (after one warm-up step)")
    p.add_argument("--matmul-size", type=int, default=8192)
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU anyway (tests; numbers mean nothing)")
    p.add_argument("--loss-impl", default="full", choices=["full", "chunked"],
                   help="bsft_jax: train.loss_impl (chunked: no [B, T, V] logits; all positions carry loss here)")
    p.add_argument("--loss-chunk", type=int, default=1024, help="chunked loss: rows of logits at a time")
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    args = p.parse_args(argv)
    if args.impl == "torch":  # JAX only measures the matmul peak here: leave the GPU memory to torch
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

    import jax

    from bench.common import hf_config_from_decoder
    from bench.train_setup import JaxTrainLoop, TorchTrainLoop

    backend = jax.default_backend()
    if backend == "cpu" and not args.allow_cpu:
        msg = "bench.gpu_mfu: no GPU/TPU found (jax backend is 'cpu'); skipped. Pass --allow-cpu to run anyway."
        print(msg)
        return {"skipped": msg}
    device = jax.devices()[0]
    peak = matmul_peak_flops(args.matmul_size)
    rows, records = [], []
    for name in [m for m in args.models.split(",") if m]:
        config = model_config(name, args.remat, args.attention)
        if args.impl == "torch":
            import torch

            on_gpu = torch.cuda.is_available()
            loop = TorchTrainLoop(hf_config_from_decoder(config), args.batch, args.seq, attn="sdpa",
                                  device="cuda" if on_gpu else "cpu", autocast="bfloat16" if on_gpu else None)
            loop.compile_seconds = 0.0
        else:
            loop = JaxTrainLoop(config, args.batch, args.seq, trainer_options=dict(
                loss_impl=args.loss_impl, loss_chunk=args.loss_chunk, loss_budget=1.0))
        loop.run(1)  # warm-up
        seconds = [loop.run(1) for _ in range(args.steps)]
        step = summary(seconds)
        flops = model_flops_per_token(config, args.seq) * loop.tokens_per_step
        mfu = [flops / s / peak for s in seconds]
        impl = ("torch (sdpa, bf16 autocast)" if args.impl == "torch"
                else f"bsft_jax ({args.attention}, {args.loss_impl} loss)")
        remat = "none" if args.impl == "torch" else args.remat
        record = dict(model=name, impl=impl, params=loop.num_params, batch=args.batch, seq=args.seq, remat=remat,
                      step_seconds=step, model_flops_per_step=flops, mfu=summary(mfu),
                      tokens_per_s=loop.tokens_per_step / step["median"], compile_seconds=loop.compile_seconds,
                      loss=loop.last_loss, peak_device_gb=peak_device_gb(args.impl, device))
        records.append(record)
        rows.append([name, impl, f"{loop.num_params / 1e9:.2f}B", f"{args.batch}x{args.seq}", remat,
                     f"{step['median']:.3f}", f"{record['tokens_per_s']:.0f}",
                     f"{flops / step['median'] / 1e12:.1f}", f"{100 * statistics.median(mfu):.1f}%",
                     f"{100 * min(mfu):.1f}-{100 * max(mfu):.1f}%"])
        del loop
    print_table(f"bf16 train-step MFU on {device.device_kind} ({backend}); measured bf16 matmul peak "
                f"{peak / 1e12:.1f} TFLOP/s (n={args.matmul_size})",
                ["model", "implementation", "params", "batch", "remat", "s/step", "tokens/s", "model TFLOP/s", "MFU",
                 "min-max"], rows)
    results = {"device": device.device_kind, "backend": backend, "matmul_peak_flops": peak, "rows": records,
               "load_avg_end": os.getloadavg()[0]}
    append_result("gpu_mfu", vars(args), results, args.results)
    return results


if __name__ == "__main__":
    main()
