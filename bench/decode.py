"""Decode throughput: bsft_jax's jitted KV-cache generation vs transformers ``generate`` (greedy).

    python -m bench.decode --size demo              # batch 8, prompts 64-128 tokens, 128 new tokens
    python -m bench.decode --size 100m

Both generate ``--new`` tokens for the same ragged batch of random prompts (lengths spread from
half of ``--prompt`` to ``--prompt``; no EOS, so every row runs the full budget). bsft_jax runs
through :class:`bsft_jax.decode.Sampler` (prompt bucketing, jitted prefill, ``lax.while_loop``
decode, host-side trimming: what the evaluator calls); its first call compiles and is reported
apart. transformers runs the batch left-padded with an attention mask and its default dynamic KV
cache, torch with as many threads as cores. The two run in INTERLEAVED repeats after a warm-up
call each; reported: generated tokens/s (median, min-max) and the per-pair ratio.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench.common import SIZES, append_result, hf_config_from_decoder, print_table, summary


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="demo", help=f"one of {sorted(SIZES)} or a bsft_jax preset (qwen2_5_0_5b, ...)")
    p.add_argument("--dtype", default="float32", help="weights and compute dtype on both sides (bfloat16 on GPU)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=128, help="longest prompt; others are shorter (down to half)")
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per implementation (interleaved)")
    p.add_argument("--no-torch", action="store_true", help="skip the transformers reference")
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    args = p.parse_args(argv)
    load_start = os.getloadavg()[0]  # before our own threads add to it

    import jax

    from bench.train_step import available_cores
    from bsft_jax import DecoderConfig, init_decoder
    from bsft_jax.decode.sampler import Sampler
    from bsft_jax.models.config import PRESETS, preset

    if args.size in SIZES:
        config = DecoderConfig(**SIZES[args.size], dtype=args.dtype, param_dtype=args.dtype)
    elif args.size in PRESETS:
        config = preset(args.size, dtype=args.dtype, param_dtype=args.dtype)
    else:
        raise SystemExit(f"--size: unknown model {args.size!r}; use one of {sorted(SIZES)} or {sorted(PRESETS)}")
    rng = np.random.RandomState(0)
    lengths = np.linspace(max(args.prompt // 2, 1), args.prompt, args.batch).astype(int)
    prompts = [rng.randint(0, config.vocab_size, n).tolist() for n in lengths]
    sampler = Sampler(init_decoder(config, seed=0))
    generated = args.batch * args.new

    def run_ours() -> float:
        out = sampler(prompts, max_new_tokens=args.new)
        assert out.num_generated == generated, out.num_generated
        return out.seconds + out.compile_seconds

    t = time.perf_counter()
    first = sampler(prompts, max_new_tokens=args.new)
    first_s, compile_s = time.perf_counter() - t, first.compile_seconds
    traces = sampler.compile_counts()

    run_theirs = None
    threads = None
    if not args.no_torch:
        import torch
        from transformers import AutoModelForCausalLM

        threads = available_cores()
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        device = torch.device("cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu")
        hf = AutoModelForCausalLM.from_config(hf_config_from_decoder(config), dtype=getattr(torch, config.dtype))
        hf = hf.to(device).eval()
        width = max(lengths)
        ids = torch.zeros((args.batch, width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt)
            mask[i, width - len(prompt):] = 1

        ids, mask = ids.to(device), mask.to(device)

        def run_theirs() -> float:
            t0 = time.perf_counter()
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                                  do_sample=False, pad_token_id=0, eos_token_id=None)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            assert out.shape == (args.batch, width + args.new), out.shape
            return seconds

        run_theirs()  # warm-up
    ours_s, theirs_s = [], []
    for _ in range(args.repeats):
        ours_s.append(run_ours())
        if run_theirs is not None:
            theirs_s.append(run_theirs())
    assert sampler.compile_counts() == traces, "a repeated call recompiled"

    ours = summary([generated / s for s in ours_s])
    results = {"bsft_tokens_per_s": ours, "bsft_seconds": ours_s, "bsft_first_call_seconds": first_s,
               "bsft_compile_seconds": compile_s, "backend": jax.default_backend(), "load_avg_start": load_start,
               "load_avg_end": os.getloadavg()[0]}
    rows = [["bsft_jax Sampler (jit prefill + while_loop)", f"{ours['median']:.0f}",
             f"{ours['min']:.0f}-{ours['max']:.0f}", f"first call {first_s:.1f} s (compile {compile_s:.1f} s)"]]
    if theirs_s:
        theirs = summary([generated / s for s in theirs_s])
        ratio = summary([b / a for a, b in zip(ours_s, theirs_s)])
        results.update(torch_tokens_per_s=theirs, torch_seconds=theirs_s, ratio_bsft_over_torch=ratio,
                       torch_threads=threads)
        rows.append(["transformers generate (torch eager, KV cache)", f"{theirs['median']:.0f}",
                     f"{theirs['min']:.0f}-{theirs['max']:.0f}",
                     f"{threads} threads" if device.type == "cpu" else str(torch.cuda.get_device_name(device))])
        rows.append(["ratio bsft/torch (per pair)", f"{ratio['median']:.2f}", f"{ratio['min']:.2f}-{ratio['max']:.2f}",
                     f"{args.repeats} pairs"])
    print_table(f"Greedy decode, {args.size} model ({config.dtype}, {jax.default_backend()}), batch {args.batch}, "
                f"prompts {min(lengths)}-{max(lengths)} tokens, {args.new} new tokens, "
                f"load avg at start {load_start:.2f}",
                ["implementation", "generated tokens/s (median)", "min-max", "notes"], rows)
    append_result("decode", vars(args), results, args.results)
    return results


if __name__ == "__main__":
    main()
