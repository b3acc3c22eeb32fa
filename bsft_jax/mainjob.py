"""``python -m bsft_jax.mainjob`` (what ``make demo`` runs): the paper's four arms in one resumable job.

Stages, each skipped on a rerun once finished (``<out_dir>/stages.json`` records them; an
interrupted training stage resumes from its last checkpoint):

  1. train BehaviorSFT      ``--config`` (default configs/demo.py: SmolLM2-135M-Instruct, demo v2)
  2. train GeneralSFT       ``--general_config`` (default configs/demo_generalsft.py)
  3. evaluate               the evaluator's one command: few-shot (k=3) and explicit-instruction
                            prompting of the base model (``--baseline_limit`` test items), GeneralSFT
                            and BehaviorSFT (``--limit`` items, the baselines' items among them;
                            categories in turn), each fine-tune at the step its recipe selected on the
                            validation split (``<run_dir>/best``, else its newest step), plus the
                            steering probe (each behavior token forced, ``--probe_limit`` items)
                            -> ``<out_dir>/report.md``, report.json, radar.png

A line per stage gives the elapsed time and the ETA of the whole job, from per-stage estimates
that are rescaled by how fast the finished stages ran (training adds its own per-step ETA).
Config overrides work as in training: ``--config.train.steps=24 --general_config.train.steps=24``.
``--smoke`` (``make demo SMOKE=1``) runs every stage on a tiny budget (4 steps, 13 test items) in
``<run_dir>_smoke`` folders and ``<out_dir>_smoke``: about 5 minutes, a check that the job runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import flags
from ml_collections import config_flags

from bsft_jax import storage
from bsft_jax.checkpoint.layout import CheckpointError
from bsft_jax.data import DataError
from bsft_jax.evaluate.compare import BASELINES, run_comparison
from bsft_jax.files import write_json
from bsft_jax.setup.cli import parse_flags, setup_logging
from bsft_jax.setup.config import ConfigError
from bsft_jax.setup.settings import Settings
from bsft_jax.train.log import format_duration
from bsft_jax.train.loop import resolve_for_training
from bsft_jax.train.loop import run as train_run
from bsft_jax.train.steer import BEST_SUBDIR

log = logging.getLogger("bsft_jax.mainjob")

STAGES_FILE = "stages.json"
# Rough seconds per stage for configs/demo.py on 2 loaded CPU cores; only the ETA uses them.
DEFAULT_ESTIMATES = {"train BehaviorSFT": 600.0, "train GeneralSFT": 560.0, "evaluate": 420.0}


@dataclasses.dataclass
class EvalOptions:
    """What the evaluate stage passes to :func:`bsft_jax.evaluate.compare.run_comparison`."""

    limit: int = 130  # fine-tuned arms: 10 per category, 90 open scenes
    baseline_limit: int = 39  # prompting arms (3 solved scenes per few-shot prompt: slow to decode)
    probe_limit: int = 39
    max_new_tokens: int = 24
    batch_size: int = 16
    few_shot_k: int = 3
    steering_probe: bool = True


# ``--smoke``: the whole job on a tiny budget (about 5 minutes on 2 cores): proves every stage runs.
SMOKE_OPTIONS = EvalOptions(limit=13, baseline_limit=13, probe_limit=13, max_new_tokens=12)


def smoke_config(cfg: Any) -> Any:
    """A recipe cut to a few steps, no periodic evaluation and its own run directory (``--smoke``)."""
    c = cfg.copy_and_resolve_references()
    c.run_dir = c.run_dir.rstrip("/") + "_smoke"
    c.train.steps = 4
    c.train.eval_every = -1
    c.train.steer_eval_items = 0
    c.train.early_stop_patience = 0
    c.checkpoint.keep_best_metric = ""
    c.checkpoint.every_steps = 4
    c.optimizer.warmup_steps = 1
    return c


class StageLog:
    """Finished stages and their wall times in ``<out_dir>/stages.json``; the ETA of the rest."""

    def __init__(self, out_dir: str, estimates: dict[str, float]):
        self.path = os.path.join(out_dir, STAGES_FILE)
        self.estimates = dict(estimates)
        self.done: dict[str, float] = {}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.done = json.load(f)["seconds"]

    def eta(self, remaining: list[str]) -> float:
        """Seconds left: the remaining stages' estimates, scaled by measured / estimated of finished ones."""
        measured = [s for s in self.done if s in self.estimates]
        scale = (sum(self.done[s] for s in measured) / sum(self.estimates[s] for s in measured)) if measured else 1.0
        return scale * sum(self.estimates.get(s, 0.0) for s in remaining)

    def finish(self, stage: str, seconds: float) -> None:
        self.done[stage] = round(seconds, 1)
        write_json(self.path, {"seconds": self.done, "total_seconds": round(sum(self.done.values()), 1)})


def run_stages(stages: list[tuple[str, Callable[[], Any]]], out_dir: str,
               estimates: dict[str, float] | None = None) -> dict[str, float]:
    """Runs the stages not yet finished, in order, with a progress line each; returns stage -> seconds."""
    os.makedirs(out_dir, exist_ok=True)
    book = StageLog(out_dir, estimates or DEFAULT_ESTIMATES)
    names = [n for n, _ in stages]
    t_job = time.perf_counter()
    for i, (name, fn) in enumerate(stages, 1):
        if name in book.done:
            log.info("[%d/%d] %s: done before (%s), skipped", i, len(stages), name, format_duration(book.done[name]))
            continue
        log.info("[%d/%d] %s: starting | job elapsed %s, ETA %s", i, len(stages), name,
                 format_duration(time.perf_counter() - t_job), format_duration(book.eta(names[i - 1:])))
        t0 = time.perf_counter()
        fn()
        book.finish(name, time.perf_counter() - t0)
        log.info("[%d/%d] %s: finished in %s | ETA %s", i, len(stages), name, format_duration(book.done[name]),
                 format_duration(book.eta([n for n in names[i:] if n not in book.done])))
    return dict(book.done)


def selected_run(settings: Settings) -> str:
    """The run folder the evaluate stage reads: ``<run_dir>/best`` when the recipe keeps a best step
    (``checkpoint.keep_best_metric``, chosen on the validation split) and training wrote one, else ``run_dir``
    (its newest step)."""
    best = storage.join(settings.run_dir, BEST_SUBDIR)
    if settings.checkpoint.keep_best_metric and storage.isfile(storage.join(best, "config.json")):
        return best
    return settings.run_dir


def main_job(behavior_cfg: Any, general_cfg: Any, out_dir: str, opts: EvalOptions) -> dict[str, float]:
    """The three stages (see the module doc) for two training configs (ml_collections, or their resolved
    :class:`Settings`). Both are resolved before any stage runs: a bad GeneralSFT recipe is reported at
    once, not after the BehaviorSFT run has trained."""
    behavior, general = (c if isinstance(c, Settings) else resolve_for_training(c) for c in (behavior_cfg, general_cfg))

    def evaluate() -> None:
        # the same settings, read for evaluation (its rules are a subset of training's)
        run_comparison(behavior, checkpoint=selected_run(behavior),
                       general_checkpoint=selected_run(general),
                       baselines=tuple(BASELINES), out_dir=out_dir, max_new_tokens=opts.max_new_tokens,
                       batch_size=opts.batch_size, limit=opts.limit, few_shot_k=opts.few_shot_k,
                       steering_probe=opts.steering_probe, baseline_limit=opts.baseline_limit,
                       probe_limit=opts.probe_limit)

    return run_stages([("train BehaviorSFT", lambda: train_run(behavior)),
                       ("train GeneralSFT", lambda: train_run(general)),
                       ("evaluate", evaluate)], out_dir)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 2 with one line for a bad flag, config, checkpoint or data file."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", "configs/demo.py", "BehaviorSFT recipe", flag_values=fv)
    config_flags.DEFINE_config_file("general_config", "configs/demo_generalsft.py", "GeneralSFT recipe",
                                    flag_values=fv)
    flags.DEFINE_string("out_dir", "runs/demo_report", "report folder (also holds stages.json)", flag_values=fv)
    d = EvalOptions()
    flags.DEFINE_integer("limit", d.limit, "test items of the fine-tuned arms, categories in turn (0: all)",
                         flag_values=fv)
    flags.DEFINE_integer("baseline_limit", d.baseline_limit, "test items of the prompting arms (a prefix of the "
                         "same order; 0: --limit)", flag_values=fv)
    flags.DEFINE_integer("probe_limit", d.probe_limit, "test items of the steering probe (0: --limit)", flag_values=fv)
    flags.DEFINE_bool("smoke", False, "a ~5-minute run of every stage on a tiny budget (own run and report folders)",
                      flag_values=fv)
    flags.DEFINE_integer("max_new_tokens", d.max_new_tokens, "reply budget", flag_values=fv)
    flags.DEFINE_integer("batch_size", d.batch_size, "prompts per decode call", flag_values=fv)
    flags.DEFINE_bool("steering_probe", d.steering_probe, "force each behavior token on BehaviorSFT", flag_values=fv)
    code = parse_flags(fv, sys.argv if argv is None else argv, __doc__)
    if code is not None:
        return code
    setup_logging()
    opts = EvalOptions(limit=fv.limit, baseline_limit=fv.baseline_limit, probe_limit=fv.probe_limit,
                       max_new_tokens=fv.max_new_tokens, batch_size=fv.batch_size, steering_probe=fv.steering_probe)
    configs, out_dir = (fv.config, fv.general_config), fv.out_dir
    if fv.smoke:
        opts = dataclasses.replace(SMOKE_OPTIONS, batch_size=fv.batch_size, steering_probe=fv.steering_probe)
        configs = tuple(smoke_config(c) for c in configs)
        out_dir = out_dir.rstrip("/") + "_smoke"
    t0 = time.perf_counter()
    try:
        main_job(*configs, out_dir, opts)
    except (ConfigError, CheckpointError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"main job done in {format_duration(time.perf_counter() - t0)} (this invocation); report: "
          f"{os.path.join(out_dir, 'report.md')} (radar.png, report.json beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
