"""Train-step and decode throughput on the real SmolLM2-135M-Instruct: bsft_jax vs transformers+torch.

    python -m bench.real_model                       # CPU: train 4 x 128 tokens, decode 4 prompts x 64 new

Both sides start from the same converted weights (``builtin:smollm2-135m-instruct``, fp32: the
folder bsft_jax.models.builtin writes and caches). Train: bsft_jax's Trainer step (jitted, AdamW)
against a transformers LlamaForCausalLM + torch AdamW eager loop (bench.train_setup, same batch,
same optimizer settings), in INTERLEAVED blocks of ``--steps`` updates after a warm-up block each.
Decode: greedy generation of ``--new`` tokens for the same 4 chat-templated clinical prompts (no EOS
stop, so every row runs the full budget): bsft_jax's Sampler (jitted prefill + while_loop; first call,
which compiles, reported apart) against ``transformers.generate`` (left-padded, KV cache), interleaved
repeats. torch uses as many threads as XLA's CPU client. The load average is recorded: on a shared
machine, compare only ratios taken in the same run.
"""

from __future__ import annotations

import argparse
import os

from bench.common import append_result, print_table, summary
from bench.train_setup import JaxTrainLoop, TorchTrainLoop

MODEL = "smollm2-135m-instruct"
PROMPTS = (
    "List the first steps in managing a patient with suspected sepsis.",
    "What are the common side effects of metformin?",
    "Explain how to tell a migraine from a tension headache.",
    "A 67-year-old man has had chest pain for two hours. What do you check first?",
)


def _train(folder: str, args, threads: int) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from bsft_jax import load_hf

    model, config = load_hf(folder, dtype="float32")
    ours = JaxTrainLoop(config, args.batch, args.seq_len, model=model)
    del model
    theirs = TorchTrainLoop(AutoConfig.from_pretrained(folder), args.batch, args.seq_len)
    pretrained = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    theirs.model.load_state_dict(pretrained.state_dict())  # in place: the optimizer keeps its parameters
    del pretrained
    ours.run(args.steps), theirs.run(args.steps)  # warm-up blocks
    ours_s, theirs_s = [], []
    for _ in range(args.rounds):
        ours_s.append(ours.run(args.steps))
        theirs_s.append(theirs.run(args.steps))
    tokens = ours.tokens_per_step * args.steps
    return {"bsft_tokens_per_s": summary([tokens / s for s in ours_s]),
            "torch_tokens_per_s": summary([tokens / s for s in theirs_s]),
            "ratio_bsft_over_torch": summary([b / a for a, b in zip(ours_s, theirs_s, strict=True)]),
            "bsft_compile_seconds": ours.compile_seconds, "losses": [ours.last_loss, theirs.last_loss],
            "torch_threads": threads}


def _decode(folder: str, args) -> dict:
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bsft_jax import load_hf
    from bsft_jax.decode import Sampler

    tok = AutoTokenizer.from_pretrained(folder)
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=False), add_special_tokens=False)["input_ids"] for q in PROMPTS]
    model, _ = load_hf(folder, dtype="float32")
    sampler = Sampler(model, pad_id=tok.pad_token_id)
    generated = len(prompts) * args.new
    t = time.perf_counter()
    first = sampler(prompts, max_new_tokens=args.new)
    first_s = time.perf_counter() - t

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1

    def theirs() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                              do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)
        assert out.shape == (len(prompts), width + args.new)
        return time.perf_counter() - t0

    def ours() -> float:
        out = sampler(prompts, max_new_tokens=args.new)
        assert out.num_generated == generated
        return out.seconds + out.compile_seconds

    theirs()  # warm-up
    ours_s, theirs_s = [], []
    for _ in range(args.repeats):
        ours_s.append(ours())
        theirs_s.append(theirs())
    return {"bsft_tokens_per_s": summary([generated / s for s in ours_s]),
            "torch_tokens_per_s": summary([generated / s for s in theirs_s]),
            "ratio_bsft_over_torch": summary([b / a for a, b in zip(ours_s, theirs_s, strict=True)]),
            "bsft_first_call_seconds": first_s, "bsft_compile_seconds": first.compile_seconds}


def main(argv: list[str] | None = None) -> dict:
    """Runs both benchmarks, prints Markdown tables, appends one record to bench/results.jsonl."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="updates per timed block")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed blocks per implementation")
    p.add_argument("--new", type=int, default=64, help="generated tokens per prompt")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed decode calls per implementation")
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    args = p.parse_args(argv)
    load_start = os.getloadavg()

    import torch

    from bench.train_step import available_cores
    from bsft_jax.models.builtin import builtin_model_path

    threads = available_cores()
    torch.set_num_threads(threads)
    folder = builtin_model_path(MODEL)
    results = {"train": _train(folder, args, threads), "decode": _decode(folder, args),
               "load_avg_start": load_start, "load_avg_end": os.getloadavg()}
    rows = []
    for what, unit in (("train", f"train step, {args.batch} x {args.seq_len} tokens"),
                       ("decode", f"greedy decode, {len(PROMPTS)} prompts x {args.new} new tokens")):
        r = results[what]
        rows.append([unit, f"{r['bsft_tokens_per_s']['median']:.0f}", f"{r['torch_tokens_per_s']['median']:.0f}",
                     f"{r['ratio_bsft_over_torch']['median']:.2f} ({r['ratio_bsft_over_torch']['min']:.2f}-"
                     f"{r['ratio_bsft_over_torch']['max']:.2f})"])
    print_table(f"Real SmolLM2-135M-Instruct (fp32, CPU, {threads} threads), load avg at start "
                f"{load_start[0]:.2f}, at end {results['load_avg_end'][0]:.2f}",
                ["what", "bsft_jax tokens/s", "transformers+torch tokens/s", "ratio bsft/torch (min-max)"], rows)
    append_result("real_model", {**vars(args), "model": MODEL}, results, args.results)
    return results


if __name__ == "__main__":
    main()
