"""Compile time of the train step and of the decode loop, and how it grows with depth.

    python -m bench.compile_time                       # demo recipe + 2..32 layers at demo width
    python -m bench.compile_time --presets qwen2_5_7b  # add real-size train steps (abstract, no weights)

Rows: the model of ``configs/demo.py`` at its batch and sequence length (the "demo train-step
compile" target), then the same width at 2, 4, 8, 16 and 32 layers. Train step: ``Trainer.compile``
(lower + compile ahead of time, from an abstract model: no weights are allocated), with the
default ``scan_unroll=1`` (the decoder scans over stacked layers: one block in the program
whatever the depth) and fully unrolled (``scan_unroll=num_layers``) for contrast. Decode: the
first ``Sampler`` call's ``compile_seconds`` (prefill + ``while_loop`` executables; decoding always
scans).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import numpy as np

from bench.common import SIZES, append_result, print_table
from bench.train_setup import decoder_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_VOCAB = 3200  # the demo tokenizer (3072 BPE + specials + behavior tokens) padded to a multiple of 128


def demo_recipe() -> tuple[dict, int, int]:
    """(arch, global batch, seq len) of configs/demo.py (the vocabulary is the demo tokenizer's size)."""
    spec = importlib.util.spec_from_file_location("demo_config", os.path.join(REPO, "configs", "demo_scratch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    a = c.model.arch
    arch = dict(model_type=a.model_type, vocab_size=DEMO_VOCAB, hidden_size=a.hidden_size,
                intermediate_size=a.intermediate_size, num_layers=a.num_layers, num_heads=a.num_heads,
                num_kv_heads=a.num_kv_heads, head_dim=a.head_dim, qkv_bias=a.model_type == "qwen2",
                tie_word_embeddings=a.tie_word_embeddings, rope_theta=a.rope_theta, rms_norm_eps=a.rms_norm_eps)
    return arch, int(c.train.global_batch_size), int(c.data.seq_len)


def train_compile_seconds(config, batch: int, seq_len: int) -> float:
    """Seconds to lower and compile the real Trainer step (one device, abstract weights)."""
    import jax
    import ml_collections

    from bench.train_setup import OPTIMIZER, TOTAL_STEPS
    from bsft_jax.models.sharding import make_mesh
    from bsft_jax.train.optim import make_optimizer
    from bsft_jax.train.step import Trainer

    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    tx, schedule = make_optimizer(ml_collections.ConfigDict(OPTIMIZER), TOTAL_STEPS)
    with jax.set_mesh(mesh):
        trainer = Trainer(config, tx, schedule, mesh)
        t0 = time.perf_counter()
        trainer.compile(batch, seq_len)
        return time.perf_counter() - t0


def decode_compile_seconds(config, batch: int, prompt: int, new: int) -> float:
    """The first Sampler call's compile time (prefill + decode loop) for ``batch`` prompts of ``prompt`` tokens."""
    from bsft_jax.decode.sampler import Sampler
    from bsft_jax.models.decoder import init_decoder

    rng = np.random.RandomState(0)
    prompts = [rng.randint(0, config.vocab_size, prompt).tolist() for _ in range(batch)]
    out = Sampler(init_decoder(config, seed=0))(prompts, max_new_tokens=new)
    return out.compile_seconds


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="demo", help="width of the layer sweep")
    p.add_argument("--layers", default="2,4,8,16,32", help="comma-separated layer counts")
    p.add_argument("--batch", type=int, default=16, help="train batch of the sweep")
    p.add_argument("--seq", type=int, default=256, help="train sequence length of the sweep")
    p.add_argument("--decode-batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--no-demo", action="store_true", help="skip the configs/demo.py row")
    p.add_argument("--presets", default="qwen2_5_7b", help="comma-separated bsft_jax presets: train step only")
    p.add_argument("--no-unrolled", action="store_true", help="skip the unrolled (scan_unroll=num_layers) compiles")
    p.add_argument("--preset-seq", type=int, default=2048, help="sequence length (batch 1) for --presets")
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    args = p.parse_args(argv)
    load_start = os.getloadavg()[0]  # before our own threads add to it

    from bsft_jax.models.config import preset

    # A throwaway compile first: one-time backend start-up is not the model's compile time.
    train_compile_seconds(decoder_config(SIZES["tiny"]), 2, 16)
    rows, records = [], []

    def measure(name: str, config, batch: int, seq: int, decode: bool) -> None:
        train_s = train_compile_seconds(config, batch, seq)
        unrolled_s = None
        if not args.no_unrolled:
            unrolled_s = train_compile_seconds(config.replace(scan_unroll=config.num_layers), batch, seq)
        decode_s = decode_compile_seconds(config, args.decode_batch, args.prompt, args.new) if decode else None
        records.append(dict(model=name, layers=config.num_layers, hidden=config.hidden_size, batch=batch, seq=seq,
                            train_compile_s=train_s, train_unrolled_compile_s=unrolled_s, decode_compile_s=decode_s))
        rows.append([name, config.num_layers, config.hidden_size, f"{batch}x{seq}", f"{train_s:.2f}",
                     "-" if unrolled_s is None else f"{unrolled_s:.2f}",
                     "-" if decode_s is None else f"{decode_s:.2f}"])

    if not args.no_demo:
        arch, batch, seq = demo_recipe()
        measure("configs/demo.py", decoder_config(arch), batch, seq, decode=True)
    for n in [int(x) for x in args.layers.split(",") if x]:
        measure(f"{args.size} width", decoder_config(SIZES[args.size], num_layers=n), args.batch, args.seq,
                decode=True)
    for name in [x for x in args.presets.split(",") if x]:
        measure(name, preset(name, dtype="bfloat16", remat="full"), 1, args.preset_seq, decode=False)

    print_table(f"Compile time (s), decode = batch {args.decode_batch}, prompt {args.prompt}, {args.new} new tokens, "
                f"load avg at start {load_start:.2f}",
                ["model", "layers", "hidden", "train batch", "train step s (scan)", "train step s (unrolled)",
                 "decode s"], rows)
    results = {"rows": records, "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0]}
    append_result("compile_time", vars(args), results, args.results)
    return results


if __name__ == "__main__":
    main()
