"""Learning curve of the main job's recipe: does each arm learn *when* to act, and after how many tokens?

    python -m bench.learning_curve                          # both arms, the make-demo recipes (hours on 2 CPU cores)
    python -m bench.learning_curve --arms BehaviorSFT --steps 400 --eval_every 50 --set optimizer.learning_rate=3e-4
    python -m bench.learning_curve --plot_only              # re-draw bench/learning_curve.png and print the table
    python -m bench.learning_curve --from_runs BehaviorSFT=runs/demo,GeneralSFT=runs/demo_generalsft
                                        # the curve of finished runs' own steering evaluations (their split)

For each arm (``--config`` BehaviorSFT, ``--general_config`` GeneralSFT; default the ``make demo``
recipes) one training run of ``--steps`` steps is made, and every ``--eval_every`` steps the current
parameters decode a fixed, stratified subset of the **test** split (``--eval_items``, categories in
turn: 130 gives 10 per category, 90 of them open scenes) with the trainer's own steering evaluation
(:mod:`bsft_jax.train.steer`, greedy, ``--max_new_tokens``). The runs keep no best step: the test split
only measures, it selects nothing. Reported per evaluation, against the training tokens seen (real
tokens, padding excluded):

* intervene-vs-hold accuracy on the open test scenes (chance 50%: the demo set's intervene rate is
  50% in every flag category), overall and per category;
* missed- and over-intervention rates;
* macro-F1 per category and overall (the evaluator's metrics).

Results: ``--out`` (bench/learning_curve.json: machine, commit, command, recipe, every point), a PNG
(``--png``, one line per arm, chance marked) and the markdown table printed (``python -m bench.render``
puts it into BENCHMARKS.md and the README). Runs resume like any training run (``--runs_dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "learning_curve.json")
PNG = os.path.join(ROOT, "bench", "learning_curve.png")
ARMS = {"BehaviorSFT": "config", "GeneralSFT": "general_config"}
THRESHOLDS = (0.7, 0.8)


def curve_config(cfg: Any, *, run_dir: str, steps: int, eval_every: int, eval_items: int, max_new_tokens: int) -> Any:
    """A copy of a recipe that measures on the test split every ``eval_every`` steps and keeps no best step."""
    c = cfg.copy_and_resolve_references()
    c.run_dir = run_dir
    c.train.steps = steps
    c.train.eval_every = eval_every
    c.train.steer_eval_split = "test"
    c.train.steer_eval_items = eval_items
    c.train.steer_max_new_tokens = max_new_tokens
    c.train.early_stop_patience = 0
    c.checkpoint.keep_best_metric = ""
    c.checkpoint.every_steps = eval_every
    c.checkpoint.keep = 1
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, steps)
    return c


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The lines of a run's metrics.jsonl (a resumed run may repeat steps: the last line of a step wins)."""
    from bsft_jax import storage

    rows: dict[tuple[str, int], dict[str, Any]] = {}
    with storage.open_file(path, "r") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[(r.get("split", "train"), int(r["step"]))] = r
    return [rows[k] for k in sorted(rows, key=lambda k: (k[1], k[0] != "train"))]


def curve_points(rows: Sequence[dict[str, Any]], rows_per_step_tokens: int) -> list[dict[str, Any]]:
    """One point per evaluation that decoded the test subset: tokens seen and the steering metrics."""
    seen, points = 0.0, []
    first_losses: list[float] = []
    for r in rows:
        if r.get("split", "train") == "train":
            seen += float(r.get("input_tokens", 0.0))
            if "first_token_loss" in r:
                first_losses.append(float(r["first_token_loss"]))
            continue
        if "steer/overall_f1" not in r:
            continue
        window = first_losses[-10:]
        points.append({
            "step": int(r["step"]),
            "tokens": int(seen),
            "row_tokens": int(r["step"]) * rows_per_step_tokens,
            "decision_accuracy": r.get("steer/decision_accuracy"),
            "missed_intervention": r.get("steer/missed_intervention"),
            "over_intervention": r.get("steer/over_intervention"),
            "overall_f1": r.get("steer/overall_f1"),
            "group_f1": {g: r[f"steer/{g}_f1"] for g in ("reactive", "balanced", "proactive")
                         if f"steer/{g}_f1" in r},
            "decision_per_category": {k.split("/", 2)[2]: v for k, v in r.items() if k.startswith("steer/decision/")},
            "f1_per_category": {k.split("/", 2)[2]: v for k, v in r.items() if k.startswith("steer/f1/")},
            "train_first_token_loss": sum(window) / len(window) if window else None,
        })
    return points


def crossings(points: Sequence[dict[str, Any]], thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """The first evaluation at or above each decision-accuracy threshold ({"70%": {step, tokens}} or None)."""
    out: dict[str, Any] = {}
    for th in thresholds:
        hit = next((p for p in points if (p["decision_accuracy"] or 0.0) >= th), None)
        out[f"{round(th * 100)}%"] = None if hit is None else {"step": hit["step"], "tokens": hit["tokens"]}
    return out


def arm_result(run_dir: str, after_step: int = 0) -> dict[str, Any]:
    """One arm's points, crossings and the split its steering evaluations read, from a run directory.

    ``after_step``: only the evaluations after this step (a branch whose folder was copied from its trunk
    at that step, e.g. a decay branch: its metrics.jsonl starts with the trunk's rows)."""
    from bsft_jax import storage

    cfg = json.loads(storage.read_text(storage.join(run_dir, "config.json")))
    points = curve_points(read_metrics(storage.join(run_dir, "metrics.jsonl")),
                          int(cfg["train"]["global_batch_size"]) * int(cfg["data"]["seq_len"]))
    points = [p for p in points if p["step"] > after_step]
    return {"points": points, "crossings": crossings(points), "run_dir": run_dir,
            "split": cfg["train"]["steer_eval_split"], "eval_items": cfg["train"]["steer_eval_items"],
            "recipe": cfg}


def run_arm(cfg: Any) -> None:
    """Trains one arm (resuming if its run directory holds checkpoints)."""
    from bsft_jax.train.loop import run as train

    train(cfg)


def plot(record: dict[str, Any], path: str) -> None:
    """One line per arm: intervene-vs-hold accuracy on open test scenes vs training tokens; chance marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for arm, res in record["results"]["arms"].items():
        pts = res["points"]
        ax.plot([p["tokens"] / 1e3 for p in pts], [100 * (p["decision_accuracy"] or 0) for p in pts], marker="o",
                label=f"{arm}")
    ax.axhline(50, color="grey", ls="--", lw=1, label="chance (50%)")
    for th in THRESHOLDS:
        ax.axhline(100 * th, color="grey", ls=":", lw=0.8)
    m = record["machine"]
    ax.set_xlabel("training tokens seen (thousands, padding excluded)")
    splits = sorted({res.get("split", "test") for res in record["results"]["arms"].values()})
    ax.set_ylabel(f"intervene-vs-hold accuracy, open {'/'.join(splits)} scenes (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{record['config']['model']}: when to act ({m.get('git', '?')}, {m.get('date', '')[:10]})",
                 fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(record: dict[str, Any]) -> str:
    """Markdown: per arm and evaluation, tokens, decision accuracy, error rates, macro-F1."""
    lines = ["| arm | step | tokens seen | intervene-vs-hold acc. | missed | over | overall macro-F1 | "
             "first-token train loss (last 10 steps) |", "|---|---|---|---|---|---|---|---|"]

    def pct(x: Any) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    for arm, res in record["results"]["arms"].items():
        for p in res["points"]:
            loss = p.get("train_first_token_loss")
            lines.append(f"| {arm} | {p['step']} | {p['tokens']:,} | {pct(p['decision_accuracy'])} | "
                         f"{pct(p['missed_intervention'])} | {pct(p['over_intervention'])} | {pct(p['overall_f1'])} | "
                         f"{'-' if loss is None else f'{loss:.3f}'} |")
    return "\n".join(lines)


def category_table(record: dict[str, Any]) -> str:
    """Markdown: intervene-vs-hold accuracy per open category at each arm's last evaluation."""
    arms = record["results"]["arms"]
    cats = sorted({c for res in arms.values() if res["points"] for c in res["points"][-1]["decision_per_category"]})
    lines = ["| category | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for c in cats:
        cells = []
        for res in arms.values():
            v = res["points"][-1]["decision_per_category"].get(c) if res["points"] else None
            cells.append("-" if v is None else f"{100 * v:.0f}")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI (exit 2 with one line on a bad argument)."""
    from bench.ablation import apply_overrides
    from bsft_jax.setup.cli import setup_logging
    from bsft_jax.setup.config import ConfigError, load_config_file

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.py")
    p.add_argument("--general_config", default="configs/demo_generalsft.py")
    p.add_argument("--arms", default="BehaviorSFT,GeneralSFT")
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--eval_every", type=int, default=40)
    p.add_argument("--eval_items", type=int, default=130, help="test items, categories in turn")
    p.add_argument("--max_new_tokens", type=int, default=12)
    p.add_argument("--runs_dir", default="runs/learning_curve")
    p.add_argument("--out", default=OUT)
    p.add_argument("--png", default=PNG)
    p.add_argument("--plot_only", action="store_true", help="re-draw the PNG and print the tables from --out")
    p.add_argument("--from_runs", default="", metavar="ARM=RUN_DIR[@AFTER_STEP],...",
                   help="no training: the curve of finished runs' steering evaluations (@N: a branch copied "
                        "from its trunk at step N keeps only its own later points)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of both recipes, e.g. --set train.first_token_loss_weight=10 (repeatable)")
    args = p.parse_args(argv)
    if args.plot_only:
        with open(args.out) as f:
            record = json.load(f)
        plot(record, args.png)
        print(table(record) + "\n\n" + category_table(record))
        return 0
    if args.from_runs:
        return _from_runs(args, argv)
    try:
        arms = [a for a in args.arms.split(",") if a]
        bad = sorted(set(arms) - set(ARMS))
        if bad or not arms:
            raise ConfigError(f"--arms must be among {sorted(ARMS)}, got {bad or 'nothing'}")
        if args.steps < 1 or args.eval_every < 1 or args.eval_items < 1:
            raise ConfigError("--steps, --eval_every and --eval_items must be >= 1")
        cfgs = {}
        for arm in arms:
            path = getattr(args, ARMS[arm])
            c = load_config_file(os.path.abspath(path), os.path.basename(path))
            apply_overrides(c, args.set)
            cfgs[arm] = curve_config(c, run_dir=os.path.join(args.runs_dir, arm), steps=args.steps,
                                     eval_every=args.eval_every, eval_items=args.eval_items,
                                     max_new_tokens=args.max_new_tokens)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    setup_logging()
    from bench.common import machine_info
    from bsft_jax.files import write_json

    results: dict[str, Any] = {"arms": {}}
    t0 = time.perf_counter()
    for arm, c in cfgs.items():
        t_arm = time.perf_counter()
        run_arm(c)
        res = arm_result(c.run_dir)
        res.pop("recipe")
        results["arms"][arm] = res | {"wall_seconds": round(time.perf_counter() - t_arm, 1)}
    first = next(iter(cfgs.values()))
    record = {"bench": "learning_curve", "machine": machine_info(),
              "config": {"model": first.model.hf_path, "recipes": [args.config, args.general_config],
                         "overrides": args.set, "steps": args.steps, "eval_every": args.eval_every,
                         "eval_items": args.eval_items, "max_new_tokens": args.max_new_tokens,
                         "command": "python -m bench.learning_curve " + " ".join(argv if argv is not None
                                                                                 else sys.argv[1:]),
                         "recipe": {arm: json.loads(json.dumps(c.to_dict())) for arm, c in cfgs.items()}},
              "results": {**results, "wall_seconds": round(time.perf_counter() - t0, 1)}}
    write_json(args.out, record)
    plot(record, args.png)
    print(table(record) + "\n\n" + category_table(record))
    print(f"wrote {args.out} and {args.png}")
    return 0


def _from_runs(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--from_runs``: the record of finished runs (no training)."""
    from bench.common import machine_info
    from bsft_jax.files import write_json

    pairs = [item.partition("=") for item in args.from_runs.split(",") if item]
    if any(not sep or not arm or not path for arm, sep, path in pairs):
        print(f"error: --from_runs {args.from_runs!r}: expected ARM=RUN_DIR[@AFTER_STEP][,...]", file=sys.stderr)
        return 2
    arms = {}
    for arm, _, spec in pairs:
        path, at, after = spec.partition("@")
        if at and not after.isdigit():
            print(f"error: --from_runs: {spec!r}: the step after '@' must be a number", file=sys.stderr)
            return 2
        if not os.path.isfile(os.path.join(path, "metrics.jsonl")):
            print(f"error: --from_runs: {path!r} has no metrics.jsonl (not a finished run directory)", file=sys.stderr)
            return 2
        arms[arm] = arm_result(path, int(after) if at else 0)
    recipes = {arm: res.pop("recipe") for arm, res in arms.items()}
    first = next(iter(recipes.values()))
    record = {"bench": "learning_curve", "machine": machine_info(),
              "config": {"model": first["model"]["hf_path"], "from_runs": args.from_runs,
                         "command": "python -m bench.learning_curve " + " ".join(argv if argv is not None
                                                                                 else sys.argv[1:]),
                         "recipe": recipes},
              "results": {"arms": arms}}
    write_json(args.out, record)
    plot(record, args.png)
    print(table(record) + "\n\n" + category_table(record))
    print(f"wrote {args.out} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
