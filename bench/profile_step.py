"""Where the CPU train step spends its time: XLA thunks of the bsft_jax step vs torch ops of the reference loop.

    python -m bench.profile_step --size 100m --threads 1      # one core: clean per-op times

Runs the same two loops as :mod:`bench.train_step` under their profilers (``jax.profiler`` trace
of the compiled step, ``torch.profiler`` of the eager loop) and prints, per step: total time,
the matmul share (XLA ``ynn_fusion``/``dot`` thunks; torch ``aten::mm``/``addmm``) and its
FLOP rate, and the largest other items. ``--threads 1`` pins the process to one core (before JAX
starts), which makes thunk times add up to the step time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

from bench.common import SIZES, append_result, print_table
from bench.train_step import DEFAULT_SHAPES


def train_flops(arch: dict, tokens: int, seq_len: int) -> float:
    """Model FLOPs of one training step (same formula as bench.gpu_mfu, full causal half)."""
    from bench.gpu_mfu import model_flops_per_token
    from bench.train_setup import decoder_config

    return model_flops_per_token(decoder_config(arch), seq_len) * tokens


_HLO_NAME = re.compile(r"^[a-z][a-z0-9_\-]*(\.\d+)*$")


def _category(name: str) -> str:
    return re.sub(r"(\.\d+)+$", "", name)


def profile_jax(arch: dict, batch: int, seq: int, steps: int, top: int) -> dict:
    """Thunk time per step of the Trainer step, by fusion kind and by the largest single thunks."""
    import jax

    from bench.train_setup import JaxTrainLoop, decoder_config

    loop = JaxTrainLoop(decoder_config(arch), batch, seq)
    loop.run(2)
    step_s = loop.run(steps) / steps
    hlo = loop.trainer._compiled.as_text()
    op_names = {m.group(1): m.group(2) for m in re.finditer(r"^\s+%(\S+) = .*?op_name=\"([^\"]*)\"", hlo, re.M)}
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        loop.run(steps)
        jax.profiler.stop_trace()
        [trace] = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(trace) as f:
            events = json.load(f)["traceEvents"]
    by_thunk: collections.Counter[str] = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and _HLO_NAME.match(name):  # thunks carry their HLO instruction's name
            by_thunk[name] += e["dur"] / 1e6 / steps
    by_kind: collections.Counter[str] = collections.Counter()
    for name, s in by_thunk.items():
        by_kind[_category(name)] += s
    matmul = sum(s for k, s in by_kind.items() if k in ("ynn_fusion", "dot"))
    return {"step_s": step_s, "thunk_s": sum(by_thunk.values()), "matmul_s": matmul,
            "kinds": dict(by_kind.most_common(top)),
            "top": [(n, s, op_names.get(n, "")[-60:]) for n, s in by_thunk.most_common(top)]}


def profile_torch(arch: dict, batch: int, seq: int, steps: int, top: int) -> dict:
    """Self CPU time per step of the torch loop, by aten op."""
    import time

    from torch.profiler import ProfilerActivity, profile

    from bench.train_setup import TorchTrainLoop

    loop = TorchTrainLoop(arch, batch, seq)
    loop.run(2)
    t0 = time.perf_counter()
    loop.run(steps)
    step_s = (time.perf_counter() - t0) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loop.run(steps)
    ops = {e.key: e.self_cpu_time_total / 1e6 / steps for e in prof.key_averages()}
    ops = dict(sorted(ops.items(), key=lambda kv: -kv[1])[:top])
    matmul = sum(s for k, s in ops.items() if k in ("aten::mm", "aten::addmm", "aten::bmm"))
    return {"step_s": step_s, "matmul_s": matmul, "ops": ops}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="100m")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="pin to this many cores (1: clean per-op times)")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--results", default=None, help="JSONL file to append to (default bench/results.jsonl)")
    args = p.parse_args(argv)
    if args.threads:
        # Pin the process to that many cores before JAX starts: XLA sizes its thread pool to them.
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    import torch

    from bench.train_step import available_cores

    torch.set_num_threads(args.threads or available_cores())
    batch, seq = args.batch or DEFAULT_SHAPES[args.size][0], args.seq or DEFAULT_SHAPES[args.size][1]
    arch = SIZES[args.size]
    flops = train_flops(arch, batch * seq, seq)
    ours = profile_jax(arch, batch, seq, args.steps, args.top)
    theirs = profile_torch(arch, batch, seq, args.steps, args.top)
    rows = [
        ["bsft_jax step", f"{ours['step_s'] * 1e3:.0f}", f"{ours['matmul_s'] * 1e3:.0f}",
         f"{flops / ours['matmul_s'] / 1e9:.0f}", f"{(ours['thunk_s'] - ours['matmul_s']) * 1e3:.0f}"],
        ["torch loop", f"{theirs['step_s'] * 1e3:.0f}", f"{theirs['matmul_s'] * 1e3:.0f}",
         f"{flops / theirs['matmul_s'] / 1e9:.0f}", f"{(theirs['step_s'] - theirs['matmul_s']) * 1e3:.0f}"],
    ]
    threads = args.threads or available_cores()
    print_table(f"Train-step profile, {args.size}, batch {batch} x {seq}, {threads} thread(s); model "
                f"{flops / 1e9:.0f} GFLOP/step (matmul rate counts all model FLOPs against matmul time; "
                f"with >1 thread, thunk times overlap)",
                ["loop", "step ms", "matmul ms", "matmul GFLOP/s", "other ms"], rows)
    print_table("bsft_jax: thunk ms per step by kind",
                ["kind", "ms"], [[k, f"{s * 1e3:.1f}"] for k, s in ours["kinds"].items()])
    print_table("bsft_jax: largest thunks (ms per step)",
                ["thunk", "ms", "op"], [[n, f"{s * 1e3:.1f}", op] for n, s, op in ours["top"]])
    print_table("torch: largest ops (self CPU ms per step)",
                ["op", "ms"], [[k, f"{s * 1e3:.1f}"] for k, s in theirs["ops"].items()])
    results = {"model_flops_per_step": flops, "bsft": ours, "torch": theirs, "threads": threads}
    append_result("profile_step", dict(vars(args), batch=batch, seq=seq), results, args.results)
    return results


if __name__ == "__main__":
    main()
