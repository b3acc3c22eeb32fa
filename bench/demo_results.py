"""Records what `make demo` printed as bench/demo_results.json, which docs/evaluation.md's demo table is rendered from.

    make demo                                   # writes runs/demo_report/report.json
    python -m bench.demo_results --wall-seconds 840 [--report runs/demo_report/report.json]
    python -m bench.render

The record carries the machine, the commit, the date, the seed of the demo configs, the wall
time and each stage's seconds (``stages.json``, which the main job writes beside report.json),
next to the numbers docs/evaluation.md shows (percent, one decimal as printed by the report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from bench.common import machine_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "demo_results.json")
RUN_KEYS = {"GeneralSFT": "generalsft", "BehaviorSFT": "behaviorsft"}
# The prompting baselines of the base model, recorded when the report has them (the v2 main job does).
BASELINE_KEYS = {"few-shot (k=3)": "few_shot", "explicit instruction": "explicit_instruction"}


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def summarize_run(metrics: dict[str, Any]) -> dict[str, Any]:
    """The demo table's figures for one run of report.json: macro-F1 per group and overall, behavior, rates."""
    behavior = metrics.get("behavior")
    out: dict[str, Any] = {
        "macro_f1_pct": {**{g: _pct(v) for g, v in metrics["per_group"].items()},
                         "overall": _pct(metrics["overall_f1"])},
        "over_intervention_pct": _pct(metrics["over_intervention"]["rate"]),
        "missed_intervention_pct": _pct(metrics["missed_intervention"]["rate"]),
        "behavior_accuracy_pct": None, "behavior_majority_pct": None,
        "items": metrics.get("num_items"),
    }
    decision = metrics.get("decision")
    if decision:
        out["decision_accuracy_pct"] = _pct(decision["accuracy"])
        out["open_items"] = decision["n"]
        out["decision_per_category_pct"] = {c: _pct(v) for c, v in decision["per_category"].items()}
    if behavior:
        out["behavior_accuracy_pct"] = _pct(behavior["accuracy"])
        out["behavior_majority_pct"] = _pct(max(sum(row) for row in behavior["confusion"]) / behavior["n"])
    return out


def demo_record(report: dict[str, Any], *, seed: int, wall_seconds: float | None,
                machine: dict[str, Any], stage_seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """The demo_results.json record for one evaluator report of the GeneralSFT and BehaviorSFT runs."""
    missing = [name for name in RUN_KEYS if name not in report["metrics"]]
    if missing:
        raise ValueError(f"report.json has no run named {', '.join(missing)} (runs: {report['runs']})")
    runs = {**{k: v for k, v in BASELINE_KEYS.items() if k in report["metrics"]}, **RUN_KEYS}
    results: dict[str, Any] = {"wall_seconds": wall_seconds, "stage_seconds": stage_seconds or {},
                               **{key: summarize_run(report["metrics"][name]) for name, key in runs.items()}}
    probe = report.get("steering_probe", {}).get("BehaviorSFT")
    if probe:
        results["steering_probe_pct"] = {b: {k: _pct(r[k]) for k in ("flag_rate", "none_rate", "unparsed_rate")}
                                         for b, r in probe.items()}
    return {"bench": "demo", "machine": machine, "config": {"seed": seed, "command": "make demo"}, "results": results}


def demo_seed() -> int:
    """The seed configs/demo.py trains with (configs/demo_generalsft.py shares it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bsft_demo_config", os.path.join(ROOT, "configs", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.get_config().seed)


def main(argv: list[str] | None = None) -> int:
    """Writes bench/demo_results.json from a demo report; exit 2 on a missing or malformed report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", default=os.path.join(ROOT, "runs", "demo_report", "report.json"))
    p.add_argument("--wall-seconds", type=float, default=None, help="wall time of the whole `make demo`")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    try:
        with open(args.report) as f:
            report = json.load(f)
        stages_path = os.path.join(os.path.dirname(args.report), "stages.json")
        stages = None
        if os.path.exists(stages_path):
            with open(stages_path) as f:
                stages = json.load(f)["seconds"]
        record = demo_record(report, seed=demo_seed(), wall_seconds=args.wall_seconds, machine=machine_info(),
                             stage_seconds=stages)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {args.report}: {e!r}", file=sys.stderr)
        return 2
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}; now run `python -m bench.render`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
