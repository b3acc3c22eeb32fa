"""Memory plans of the shipped 7B/8B recipes on common slices, as a Markdown table (docs/training.md).

    python -m bench.plan_table [--compilers tpu,cpu]

Appends one ``plan_table`` record (machine, commit, every row) to bench/results.jsonl; the
planner table of docs/training.md is rendered from the newest one by ``python -m bench.render``.

Each cell is one ``python -m bsft_jax.train --config ... --plan`` run (a subprocess: every plan
needs its own device count). "tpu" needs libtpu (``pip install libtpu==0.0.42.1``); without it
only the CPU-compiler estimates are produced. No weights are loaded: the HF folders need not exist.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = [("Qwen2.5-7B", "configs/qwen2_5_7b_behaviorsft.py"), ("Llama-3.1-8B", "configs/llama3_1_8b_behaviorsft.py"),
           ("MedGemma-27B", "configs/medgemma_27b_behaviorsft.py")]
# (target, mesh): the recipes' default mesh (fsdp over all devices) where the batch divides it.
SLICES = [("v4-32", "data=1,fsdp=-1,tensor=1"), ("v5p-32", "data=1,fsdp=-1,tensor=1"),
          ("v5p-64", "data=1,fsdp=-1,tensor=1"), ("v5e-64", "data=1,fsdp=-1,tensor=4"),
          ("8xh100", "data=1,fsdp=-1,tensor=1")]
GiB = 1024**3


def _cell_cache(config: str, target: str, mesh: str, compiler: str) -> str:
    """Where one plan of this commit is kept, so that an interrupted table resumes (an ignored folder)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "nogit"
    name = f"{os.path.basename(config)}-{target}-{mesh}-{compiler}.json".replace("=", "").replace(",", "_")
    return os.path.join(ROOT, ".cache", "plan_table", commit, name)


def plan(config: str, target: str, mesh: str, compiler: str, cached_only: bool = False) -> dict | None:
    """One plan through the CLI (or this commit's cached one); None if this compiler cannot plan this target
    (or, with ``cached_only``, if no plan of this commit is cached)."""
    if compiler == "tpu" and not target.startswith("v"):
        return None
    out = _cell_cache(config, target, mesh, compiler)
    if cached_only and not os.path.exists(out):
        return None
    if not os.path.exists(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cmd = [sys.executable, "-m", "bsft_jax.train", "--config", config, "--plan", f"--plan_target={target}",
               f"--mesh={mesh}", f"--plan_compiler={compiler}", f"--plan_json={out}.tmp"]
        # ALLOW_MULTIPLE_LIBTPU_LOAD: several TPU-compiler plans at once (libtpu otherwise takes a lockfile).
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   ALLOW_MULTIPLE_LIBTPU_LOAD="1")
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{config} {target} {compiler}: {r.stderr[-500:]}", file=sys.stderr)
            return None
        os.replace(f"{out}.tmp", out)
    with open(out) as f:
        result = json.load(f)
    peak = result["xla"]["peak"]
    print(f"{config} {target} {compiler}: " + (f"peak {peak / GiB:.2f} GiB" if peak is not None else
          f"out of HBM (temporaries {result['xla']['temp'] / GiB:.2f} GiB)"), flush=True)
    return result


def plan_rows(compilers: list[str], jobs: int = 1, cached_only: bool = False) -> list[dict]:
    """One row per (recipe, slice): the analytic bytes and, per compiler, XLA's temp and peak (None: not planned).

    ``jobs`` plans run at once (each is its own process; compile-only, so the results do not depend on it).
    """
    cells = [(model, config, target, mesh, c) for model, config in RECIPES for target, mesh in SLICES
             for c in compilers]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        plans = dict(zip(cells, pool.map(lambda cell: plan(*cell[1:], cached_only=cached_only), cells)))
    rows = []
    for model, config in RECIPES:
        for target, mesh in SLICES:
            by_compiler = {c: plans[(model, config, target, mesh, c)] for c in compilers}
            first = next((q for q in by_compiler.values() if q), None)
            if first is None:
                continue
            main_plan = by_compiler.get("tpu") or first
            rows.append({
                "model": model, "config": config, "target": target, "mesh": first["mesh"],
                "num_devices": first["num_devices"], "hbm_bytes_per_device": first["hbm_bytes_per_device"],
                "analytic": first["analytic"], "main_compiler": main_plan["compiler"], "fits": bool(main_plan["fits"]),
                "xla": {c: (q["xla"] if q else None) for c, q in by_compiler.items()},
            })
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Plans every (recipe, slice), appends one ``plan_table`` record to the results file, prints the table."""
    from bench.common import RESULTS, append_result
    from bench.tables import plan_table_markdown

    p = argparse.ArgumentParser()
    p.add_argument("--compilers", default="tpu,cpu")
    p.add_argument("--results", default=RESULTS, help="JSONL file the record is appended to")
    p.add_argument("--jobs", type=int, default=1, help="plans compiled at once (each needs a few GB of RAM)")
    p.add_argument("--cached-only", action="store_true",
                   help="only this commit's cached plans (.cache/plan_table/): cells without one are left out")
    args = p.parse_args(argv)
    config = {"compilers": args.compilers.split(","), "recipes": RECIPES, "slices": SLICES,
              "cached_only": args.cached_only}
    results = {"rows": plan_rows(config["compilers"], args.jobs, args.cached_only)}
    append_result("plan_table", config, results, path=args.results)
    print(plan_table_markdown({"config": config, "results": results}))
    return results


if __name__ == "__main__":
    main()
