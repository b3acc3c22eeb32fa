"""Memory plans of the shipped 7B/8B recipes on common slices, as a Markdown table (README figures).

    python bench/plan_table.py [--compilers tpu,cpu] [--out bench/plan_table.md]

Each cell is one ``python -m bsft_jax.train --config ... --plan`` run (a subprocess: every plan
needs its own device count). "tpu" needs libtpu (``pip install libtpu==0.0.42.1``); without it
only the CPU-compiler estimates are produced. No weights are loaded: the HF folders need not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = [("Qwen2.5-7B", "configs/qwen2_5_7b_behaviorsft.py"), ("Llama-3.1-8B", "configs/llama3_1_8b_behaviorsft.py"),
           ("MedGemma-27B", "configs/medgemma_27b_behaviorsft.py")]
# (target, mesh): the recipes' default mesh (fsdp over all devices) where the batch divides it.
SLICES = [("v4-32", "data=1,fsdp=-1,tensor=1"), ("v5p-32", "data=1,fsdp=-1,tensor=1"),
          ("v5p-64", "data=1,fsdp=-1,tensor=1"), ("v5e-64", "data=1,fsdp=-1,tensor=4"),
          ("8xh100", "data=1,fsdp=-1,tensor=1")]
GiB = 1024**3


def plan(config: str, target: str, mesh: str, compiler: str) -> dict | None:
    """One plan through the CLI; None if this compiler cannot plan this target."""
    if compiler == "tpu" and not target.startswith("v"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "plan.json")
        cmd = [sys.executable, "-m", "bsft_jax.train", "--config", config, "--plan", f"--plan_target={target}",
               f"--mesh={mesh}", f"--plan_compiler={compiler}", f"--plan_json={out}"]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{config} {target} {compiler}: {r.stderr[-500:]}", file=sys.stderr)
            return None
        with open(out) as f:
            return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--compilers", default="tpu,cpu")
    p.add_argument("--out", default="")
    args = p.parse_args()
    compilers = args.compilers.split(",")
    header = ("| model | slice (devices, HBM/device) | mesh | params | AdamW m+v | grads | XLA temp | peak "
              + " | ".join(f"({c})" for c in compilers) + " | fits |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for model, config in RECIPES:
        for target, mesh in SLICES:
            plans = {c: plan(config, target, mesh, c) for c in compilers}
            first = next((q for q in plans.values() if q), None)
            if first is None:
                continue
            a, m = first["analytic"], first["mesh"]
            main_plan = plans.get("tpu") or first
            peaks = " | ".join(f"{q['xla']['peak'] / GiB:.1f}" if q else "-" for q in plans.values())
            rows.append(
                f"| {model} | {target} ({first['num_devices']}, {first['hbm_bytes_per_device'] / GiB:.0f} GiB) | "
                f"fsdp={m['fsdp']} tensor={m['tensor']} | {a['params'] / GiB:.2f} | {a['opt_state'] / GiB:.2f} | "
                f"{a['gradients'] / GiB:.2f} | {main_plan['xla']['temp'] / GiB:.1f} ({main_plan['compiler']}) | "
                f"{peaks} | {'yes' if main_plan['fits'] else 'NO'} |")
            print(rows[-1], flush=True)
    text = "\n".join(rows)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
