"""Decode throughput: bsft_jax's jitted KV-cache generation vs transformers ``generate`` (greedy).

    python -m bench.decode --size demo --batch 8 --prompt 64 --new 64

Both generate ``--new`` tokens for the same ragged batch of random prompts (no EOS, so every row
runs the full budget). bsft_jax is timed after a warm-up call (compilation reported separately);
transformers runs the batch left-padded with an attention mask. Reported: generated tokens/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import SIZES, append_result, hf_qwen2_config, print_table, summary, timed


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", choices=sorted(SIZES), default="demo")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64, help="longest prompt; others are shorter")
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-torch", action="store_true", help="skip the transformers reference")
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    args = p.parse_args(argv)

    import jax

    from bsft_jax import DecoderConfig, init_decoder
    from bsft_jax.decode import Sampler, trace_counts

    arch = SIZES[args.size]
    rng = np.random.RandomState(0)
    lengths = np.linspace(args.prompt // 2, args.prompt, args.batch).astype(int)
    prompts = [rng.randint(0, arch["vocab_size"], n).tolist() for n in lengths]
    model = init_decoder(DecoderConfig(**arch), seed=0)
    sampler = Sampler(model)

    t = time.perf_counter()
    sampler(prompts, max_new_tokens=args.new)
    compile_s = time.perf_counter() - t
    traces = trace_counts()
    ours = summary(timed(lambda: sampler(prompts, max_new_tokens=args.new), repeats=args.repeats, warmup=0))
    assert trace_counts() == traces, "a repeated call recompiled"
    generated = args.batch * args.new
    results = {"bsft_tokens_per_s": generated / ours["median"], "bsft_seconds": ours,
               "bsft_first_call_seconds": compile_s, "backend": jax.default_backend()}
    rows = [["bsft_jax (jit, while_loop)", f"{generated / ours['median']:.1f}", f"{ours['median']:.3f}",
             f"{compile_s:.2f}"]]
    if not args.no_torch:
        import torch
        from transformers import Qwen2ForCausalLM

        torch.manual_seed(0)
        hf = Qwen2ForCausalLM(hf_qwen2_config(arch)).eval()
        width = max(lengths)
        ids = torch.zeros((args.batch, width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt)
            mask[i, width - len(prompt):] = 1

        def run_torch():
            with torch.no_grad():
                hf.generate(ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                            do_sample=False, pad_token_id=0, eos_token_id=None)

        theirs = summary(timed(run_torch, repeats=args.repeats, warmup=1))
        results.update(torch_tokens_per_s=generated / theirs["median"], torch_seconds=theirs)
        rows.append(["transformers generate (torch)", f"{generated / theirs['median']:.1f}",
                     f"{theirs['median']:.3f}", "-"])
    print_table(f"Greedy decode, {args.size} model, batch {args.batch}, prompts {min(lengths)}-{max(lengths)}, "
                f"{args.new} new tokens", ["implementation", "tokens/s", "seconds (median)", "first call s"], rows)
    append_result("decode", vars(args), results, args.results)
    return results


if __name__ == "__main__":
    main()
