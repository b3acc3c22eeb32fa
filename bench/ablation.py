"""The seeded ablation (``make ablation``): GeneralSFT vs BehaviorSFT over seeds and both token schemes.

    python -m bench.ablation [--seeds 0,1,2] [--schemes group,item] [--limit 130] [--bootstrap 2000]
    python -m bench.render                          # the "ablation" table of docs/evaluation.md

For every scheme (``group``: reactive / balanced / proactive tokens; ``item``: answer / intervene /
hold) and seed, both recipes of ``--config`` / ``--general_config`` (default the ``make demo``
recipes) are trained (``seed`` sets the initialisation of the behavior rows, the data order and
the RNG) and evaluated by the evaluator's one command on the same test items (``--limit``,
categories in turn). GeneralSFT has no behavior tokens, so the scheme cannot change it: its run of
a seed (``seed<N>_gsft``) is trained once and shared by every scheme. Reported: mean ± sample std
over seeds of macro-F1 per group and overall; per seed, the over- / missed-intervention rates and
BehaviorSFT's behavior-selection accuracy; and a paired bootstrap CI of BehaviorSFT - GeneralSFT on
proactive and overall macro-F1 (test items resampled with replacement, the same resample for both
arms and every seed; the difference is averaged over seeds). Runs go to ``--runs_dir`` and are
resumed/skipped like any training run. A scheme run alone (``--schemes group``) is merged into an
existing results file of the same seeds, items and recipes. Hours on 2 CPU cores at the default
sizes: not part of ``make demo`` or the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "ablation_results.json")
SCHEME_NAMES = {"group": ("reactive", "balanced", "proactive"), "item": ("answer", "intervene", "hold")}
ARMS = ("GeneralSFT", "BehaviorSFT")
CI_METRICS = ("proactive", "overall")


def scheme_config(cfg: Any, scheme: str, seed: int, run_dir: str) -> Any:
    """A copy of a recipe with the behavior-token scheme, the seed and the run directory set."""
    c = cfg.copy_and_resolve_references()
    c.behavior.scheme = scheme
    c.behavior.names = SCHEME_NAMES[scheme]
    c.seed = seed
    c.data.shuffle_seed = seed
    c.run_dir = run_dir
    return c


def macro_scores(items: Sequence[Any]) -> dict[str, float]:
    """Overall and per-group macro-F1 of scored items (the evaluator's metrics)."""
    from bsft_jax.evaluate.metrics import compute_metrics

    m = compute_metrics(items)
    return {"overall": m["overall_f1"], **{g: v for g, v in m["per_group"].items() if v is not None}}


def decision_rates(items: Sequence[Any]) -> dict[str, float | None]:
    """Over- and missed-intervention rates and behavior-selection accuracy (None without behaviors)."""
    from bsft_jax.evaluate.metrics import compute_metrics

    m = compute_metrics(items)
    return {"over_intervention": m["over_intervention"]["rate"],
            "missed_intervention": m["missed_intervention"]["rate"],
            "behavior_accuracy": m["behavior"]["accuracy"] if m["behavior"] else None}


def paired_bootstrap(pairs: Sequence[tuple[Sequence[Any], Sequence[Any]]], metric: str, *, samples: int,
                     seed: int = 0, score: Callable[[Sequence[Any]], dict[str, float]] = macro_scores
                     ) -> dict[str, float]:
    """Mean over seeds of (BehaviorSFT - GeneralSFT) ``metric`` and its 95% percentile bootstrap CI.

    ``pairs``: per seed, (GeneralSFT items, BehaviorSFT items) on the same test items in the same order.
    """
    n = len(pairs[0][0])
    if any(len(g) != n or len(b) != n for g, b in pairs):
        raise ValueError("paired_bootstrap: every run must score the same test items")
    if any([i.id for i in g] != [i.id for i in b] for g, b in pairs):
        raise ValueError("paired_bootstrap: the arms' items are not in the same order")

    def diff(index: Sequence[int]) -> float:
        return statistics.fmean(score([b[i] for i in index])[metric] - score([g[i] for i in index])[metric]
                                for g, b in pairs)

    rng = random.Random(seed)
    draws = sorted(diff([rng.randrange(n) for _ in range(n)]) for _ in range(samples))
    lo, hi = draws[int(0.025 * (samples - 1))], draws[round(0.975 * (samples - 1))]
    return {"mean": diff(range(n)), "ci_low": lo, "ci_high": hi, "samples": samples}


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def run_pair(behavior_cfg: Any, general_cfg: Any, out_dir: str, limit: int, max_new_tokens: int) -> dict[str, list]:
    """Trains both arms (resuming / skipping finished runs) and evaluates them; returns arm -> scored items."""
    from bsft_jax.evaluate.compare import run_comparison
    from bsft_jax.evaluate.metrics import ScoredItem
    from bsft_jax.train.loop import run as train

    for c in (behavior_cfg, general_cfg):
        train(c)
    run_comparison(behavior_cfg, checkpoint=behavior_cfg.run_dir, general_checkpoint=general_cfg.run_dir,
                   baselines=(), out_dir=out_dir, limit=limit, max_new_tokens=max_new_tokens)
    out = {}
    for arm in ARMS:
        with open(os.path.join(out_dir, f"predictions_{arm}.jsonl")) as f:
            out[arm] = [ScoredItem(**json.loads(line)) for line in f]
    return out


def ablation(behavior_cfg: Any, general_cfg: Any, *, seeds: Sequence[int], schemes: Sequence[str], runs_dir: str,
             limit: int, max_new_tokens: int = 24, bootstrap: int = 2000) -> dict[str, Any]:
    """Every (scheme, seed, arm) run, then the per-scheme summary; returns the results dict.

    The GeneralSFT recipe keeps its own scheme (it has no tokens, so the scheme is inert there) and
    its run of a seed is shared across schemes.
    """
    results: dict[str, Any] = {}
    for scheme in schemes:
        t0 = time.perf_counter()
        pairs, scores, rates = [], {arm: [] for arm in ARMS}, {arm: [] for arm in ARMS}
        for seed in seeds:
            name = f"{scheme}_seed{seed}"
            general = scheme_config(general_cfg, general_cfg.behavior.scheme, seed,
                                    os.path.join(runs_dir, f"seed{seed}_gsft"))
            items = run_pair(scheme_config(behavior_cfg, scheme, seed, os.path.join(runs_dir, name + "_bsft")),
                             general, os.path.join(runs_dir, name + "_eval"), limit, max_new_tokens)
            pairs.append((items["GeneralSFT"], items["BehaviorSFT"]))
            for arm in ARMS:
                scores[arm].append(macro_scores(items[arm]))
                rates[arm].append(decision_rates(items[arm]))
        results[scheme] = {
            "macro_f1": {arm: {k: _summary([s[k] for s in scores[arm]]) for k in scores[arm][0]} for arm in ARMS},
            "per_seed": {arm: scores[arm] for arm in ARMS},
            "rates_per_seed": rates,
            "diff_ci": {m: paired_bootstrap(pairs, m, samples=bootstrap) for m in CI_METRICS},
            "test_items": len(pairs[0][0]),
            "wall_seconds": round(time.perf_counter() - t0, 1),
        }
    return results


def merge_record(previous: dict[str, Any] | None, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` plus the schemes of ``previous`` it did not run, when both ran the same experiment.

    Same experiment: the same seeds, test-item limit, recipes and overrides. Otherwise (or with no
    previous record) ``record`` alone. The merged record lists its schemes in the canonical order and
    keeps each scheme's own machine/commit stamp under ``results[scheme]["machine"]``.
    """
    keys = ("seeds", "limit", "recipes", "overrides")
    if not previous or any(previous["config"].get(k) != record["config"].get(k) for k in keys):
        return record
    merged = {**record, "config": dict(record["config"]), "results": dict(record["results"])}
    for scheme in previous["config"]["schemes"]:
        if scheme not in record["config"]["schemes"]:
            merged["results"][scheme] = {"machine": previous["machine"], **previous["results"][scheme]}
    merged["config"]["schemes"] = [s for s in SCHEME_NAMES if s in merged["results"]]
    merged["results"]["wall_seconds"] = round(sum(merged["results"][s].get("wall_seconds", 0)
                                                  for s in merged["config"]["schemes"]), 1) or \
        record["results"]["wall_seconds"]
    return merged


def main(argv: list[str] | None = None) -> int:
    """CLI: runs the ablation and writes the results file (exit 2 with one line on a bad argument)."""
    from bsft_jax.setup.cli import setup_logging
    from bsft_jax.setup.config import ConfigError, load_config_file

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.py")
    p.add_argument("--general_config", default="configs/demo_generalsft.py")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--schemes", default="group,item")
    p.add_argument("--limit", type=int, default=130, help="test items, categories in turn (0: all)")
    p.add_argument("--max_new_tokens", type=int, default=24)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--runs_dir", default="runs/ablation")
    p.add_argument("--out", default=OUT)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of both recipes, e.g. --set train.steps=24 (repeatable)")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
        schemes = [s for s in args.schemes.split(",") if s]
        bad = sorted(set(schemes) - set(SCHEME_NAMES))
        if bad or len(seeds) < 1:
            raise ConfigError(f"--schemes must be among {sorted(SCHEME_NAMES)} (got {bad}) and --seeds non-empty")
        cfgs = [load_config_file(os.path.abspath(path), os.path.basename(path))
                for path in (args.config, args.general_config)]
        for c in cfgs:
            apply_overrides(c, args.set)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    setup_logging()
    t0 = time.perf_counter()
    results = ablation(*cfgs, seeds=seeds, schemes=schemes, runs_dir=args.runs_dir, limit=args.limit,
                       max_new_tokens=args.max_new_tokens, bootstrap=args.bootstrap)
    from bench.common import machine_info

    record = {"bench": "ablation", "machine": machine_info(),
              "config": {"seeds": seeds, "schemes": schemes, "limit": args.limit, "recipes": [args.config,
                         args.general_config], "overrides": args.set, "command": "make ablation"},
              "results": {**results, "wall_seconds": round(time.perf_counter() - t0, 1)}}
    previous = None
    if os.path.exists(args.out):
        with open(args.out) as f:
            previous = json.load(f)
    from bsft_jax.files import write_json

    write_json(args.out, merge_record(previous, record))
    print(f"wrote {args.out}; render docs/evaluation.md with: python -m bench.render")
    return 0


def apply_overrides(cfg: Any, overrides: Sequence[str]) -> None:
    """``FIELD=VALUE`` strings onto a ConfigDict (VALUE parsed as JSON when it parses, else a string)."""
    from bsft_jax.setup.config import ConfigError

    for item in overrides:
        field, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = field.split(".")
        node = cfg
        for part in parents:
            if part not in node:
                raise ConfigError(f"--set {item!r}: unknown config field {field!r}")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"--set {item!r}: unknown config field {field!r}")
        node[leaf] = value


if __name__ == "__main__":
    sys.exit(main())
