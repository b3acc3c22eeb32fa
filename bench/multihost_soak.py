"""Soak: a 2-process job where one process is killed with -9 at random times dies whole, and resumes exactly.

    python -m bench.multihost_soak                      # 10 kills, ~15-25 min on 2 idle CPU cores
    python -m bench.multihost_soak --kills 2 --steps 30 --every 2 --max_delay 0.3 --peer_timeout 15  # the test's size

Each process of ``launch/local.py`` (2 processes x 2 fake CPU devices, a tiny scratch model on the
synthetic copy task) runs ``python -m bsft_jax.train`` with ``distributed.peer_timeout_seconds`` =
``--peer_timeout``. A round: (re)start the job on the run directory, wait until it logs a step past
every step logged before and past the first save, wait a random time (mid-step, mid-save, ...),
``kill -9`` one process chosen at random and measure how long the other takes to exit on its own
(nothing here stops it). It must exit non-zero within the bound, ``2 x peer_timeout + --slack``
seconds. After ``--kills`` rounds the job runs to the end. An uninterrupted 2-process run of the
same command, run alongside, is the reference: the final weights and every logged step's loss and
batch fingerprint must be equal bit for bit (steps run twice, after a kill between two saves, must
give the same numbers both times).

Writes one JSON line to bench/results.jsonl (``--results``): the machine, the commit, the command,
and per kill the victim, the step reached, the survivor's exit status and seconds to exit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import signal
import sys
import tempfile
import time
from typing import Any

from bench.common import append_result, print_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launcher() -> Any:
    """launch/local.py as a module (launch/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bsft_launch_local", os.path.join(REPO, "launch", "local.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def train_args(run_dir: str, args: argparse.Namespace) -> list[str]:
    """The training command's arguments: the demo recipe shrunk to a tiny model on synthetic data."""
    overrides = {
        "run_dir": run_dir, "data.source": "synthetic", "data.seq_len": 32, "data.synthetic_vocab": 64,
        "model.arch.hidden_size": 32, "model.arch.intermediate_size": 64, "model.arch.num_layers": 2,
        "model.arch.num_heads": 4, "model.arch.num_kv_heads": 2, "model.arch.head_dim": 8,
        "model.arch.max_position_embeddings": 64, "model.scan_unroll": 1, "model.vocab_pad_multiple": 16,
        "train.steps": args.steps, "train.global_batch_size": 8, "train.log_every": 1, "train.eval_every": -1,
        "optimizer.warmup_steps": 2, "mesh.data": -1, "mesh.fsdp": 1, "checkpoint.every_steps": args.every,
        "logging.tensorboard": False, "distributed.peer_timeout_seconds": args.peer_timeout,
    }
    return ["--config", os.path.join(REPO, "configs", "demo_scratch.py"),
            *(f"--config.{k}={v}" for k, v in overrides.items())]


def _logged_steps(run_dir: str) -> list[dict[str, Any]]:
    """The train records of metrics.jsonl so far (a line cut short by a kill is left out)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("split") == "train":
                out.append(record)
    return out


def _stop(job: Any) -> None:
    for p in job.procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    job.close()


def _start(launcher: Any, run_dir: str, args: argparse.Namespace, log_dir: str) -> Any:
    return launcher.start(2, train_args(run_dir, args), devices_per_process=2, log_dir=log_dir, echo=False)


def _finish(job: Any, run_dir: str, args: argparse.Namespace, log_dir: str) -> None:
    """Waits for a started job to end; it must succeed on both processes."""
    deadline = time.monotonic() + args.run_timeout
    try:
        while any(p.poll() is None for p in job.procs) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        _stop(job)
    codes = [p.returncode for p in job.procs]
    if codes != [0, 0]:
        raise RuntimeError(f"{run_dir}: the job ended with {codes}; see {log_dir}")


def kill_round(launcher: Any, run_dir: str, args: argparse.Namespace, log_dir: str, rng: random.Random,
               bound: float) -> dict[str, Any] | None:
    """One start + kill -9 of a random process; None if the job finished before a kill could land."""
    # Past every step logged before (each round gets further), and past the first save (each restart resumes).
    before = max(max((r["step"] for r in _logged_steps(run_dir)), default=0), args.every)
    job = _start(launcher, run_dir, args, log_dir)
    try:
        deadline = time.monotonic() + args.run_timeout
        while max((r["step"] for r in _logged_steps(run_dir)), default=0) <= before:
            if any(p.poll() is not None for p in job.procs):
                codes = [p.poll() for p in job.procs]
                if codes == [0, 0]:
                    return None
                raise RuntimeError(f"the job stopped on its own with {codes} before step {before + 1}; see {log_dir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no step past {before} within {args.run_timeout} s; see {log_dir}")
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, args.max_delay))
        victim = rng.randrange(2)
        survivor = job.procs[1 - victim]
        if any(p.poll() is not None for p in job.procs):  # finished (or failed) during the delay
            _stop(job)
            if [p.returncode for p in job.procs] == [0, 0]:
                return None
            raise RuntimeError(f"the job stopped on its own with {[p.returncode for p in job.procs]}; see {log_dir}")
        step = max((r["step"] for r in _logged_steps(run_dir)), default=0)
        job.procs[victim].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        while survivor.poll() is None and time.monotonic() - t0 < max(3 * bound, 60.0):
            time.sleep(0.02)
        seconds = time.monotonic() - t0
        exited = survivor.poll() is not None
    finally:
        _stop(job)
    return {"victim": victim, "step_logged": step, "survivor_exit": survivor.returncode if exited else None,
            "seconds_to_exit": round(seconds, 2), "within_bound": exited and survivor.returncode != 0
            and seconds <= bound, "survivor_last_line": _last_line(os.path.join(log_dir, f"process_{1 - victim}.log"))}


def _last_line(path: str) -> str:
    """The last non-blank line of a process log (the survivor's reason for exiting), launcher prefix dropped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    last = lines[-1] if lines else ""
    return last.split("] ", 1)[1] if last.startswith("[") and "] " in last else last


def compare(run_dir: str, ref_dir: str) -> dict[str, Any]:
    """Per-step losses and batch fingerprints (every logged copy of a step) and the final weights, bitwise."""
    import jax
    import numpy as np
    from flax import nnx

    from bsft_jax.checkpoint.read import load_params

    ref = {r["step"]: r for r in _logged_steps(ref_dir)}
    mismatched, repeated = [], 0
    seen: set[int] = set()
    for r in _logged_steps(run_dir):
        repeated += r["step"] in seen
        seen.add(r["step"])
        want = ref.get(r["step"])
        if want is None or (r["loss"], r["batch_crc"]) != (want["loss"], want["batch_crc"]):
            mismatched.append(r["step"])
    missing = sorted(set(ref) - seen)
    leaves = [jax.tree.leaves(nnx.state(load_params(d)[0])) for d in (run_dir, ref_dir)]
    different = sum(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(*leaves, strict=True))
    return {"steps": len(ref), "steps_rerun_after_a_kill": repeated, "loss_mismatched_steps": mismatched,
            "missing_steps": missing, "weight_arrays": len(leaves[0]), "weight_arrays_different": different,
            "bitwise_equal": not mismatched and not missing and different == 0}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--steps", type=int, default=200, help="training steps of the job")
    p.add_argument("--every", type=int, default=5, help="checkpoint.every_steps")
    p.add_argument("--peer_timeout", type=int, default=10, help="distributed.peer_timeout_seconds")
    p.add_argument("--slack", type=float, default=10.0, help="bound = 2 x peer_timeout + slack seconds")
    p.add_argument("--max_delay", type=float, default=1.0, help="a kill lands up to this long after a new step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run_timeout", type=float, default=600.0, help="seconds one start may take to log a step")
    p.add_argument("--work", default=None, help="folder for the two run directories (default: a temporary one)")
    p.add_argument("--results", default=None, help="JSONL to append to (default bench/results.jsonl)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the soak; returns (and records) the results."""
    args = _parser().parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="bsft_multihost_soak_")
    run_dir, ref_dir, logs = (os.path.join(work, n) for n in ("run", "reference", "logs"))
    launcher, rng = _launcher(), random.Random(args.seed)
    bound = 2 * args.peer_timeout + args.slack
    t_start = time.monotonic()
    # The uninterrupted reference runs beside the soak (its own run directory and coordinator port).
    reference = _start(launcher, ref_dir, args, os.path.join(logs, "reference"))
    kills = []
    for k in range(args.kills):
        record = kill_round(launcher, run_dir, args, os.path.join(logs, f"round_{k}"), rng, bound)
        if record is None:
            break
        kills.append(record)
        print(f"kill {k + 1}/{args.kills}: p{record['victim']} at step {record['step_logged']}; the survivor "
              f"exited with {record['survivor_exit']} after {record['seconds_to_exit']} s", flush=True)
    _finish(_start(launcher, run_dir, args, os.path.join(logs, "final")), run_dir, args, os.path.join(logs, "final"))
    _finish(reference, ref_dir, args, os.path.join(logs, "reference"))
    results: dict[str, Any] = {
        "kills": len(kills), "kills_asked": args.kills, "bound_seconds": bound,
        "all_within_bound": all(r["within_bound"] for r in kills),
        "seconds_to_exit": [r["seconds_to_exit"] for r in kills],
        "max_seconds_to_exit": max((r["seconds_to_exit"] for r in kills), default=None),
        "per_kill": kills, "wall_seconds": round(time.monotonic() - t_start, 1), "load_avg_end": os.getloadavg()[0],
    }
    results |= compare(run_dir, ref_dir)
    print_table(f"multi-host soak: {len(kills)} kills, peer timeout {args.peer_timeout} s (bound {bound:g} s)",
                ["kill", "victim", "step", "survivor exit", "seconds to exit"],
                [[i + 1, f"p{r['victim']}", r["step_logged"], r["survivor_exit"], r["seconds_to_exit"]]
                 for i, r in enumerate(kills)])
    print(f"bitwise equal to the uninterrupted run: {results['bitwise_equal']} ({results['steps']} steps, "
          f"{results['steps_rerun_after_a_kill']} run twice, {results['weight_arrays']} weight arrays)")
    config = vars(args) | {"command": "python -m bench.multihost_soak " + " ".join(
        argv if argv is not None else sys.argv[1:]), "work": work}
    append_result("multihost_soak", config, results, args.results)
    return results


if __name__ == "__main__":
    out = main()
    sys.exit(0 if out["all_within_bound"] and out["bitwise_equal"] else 1)
