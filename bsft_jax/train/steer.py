"""Steering evaluation during training, the keep-best checkpoint and early stopping.

At every held-out evaluation (``train.eval_every``) :class:`SteerEval` decodes a fixed, stratified
subset of ``train.steer_eval_split`` (``train.steer_eval_items`` items, categories in turn) with the
current parameters, through the evaluator's own code (:func:`bsft_jax.evaluate.core.evaluate_model`),
and returns generation-based macro-F1 (overall and per group), behavior-selection accuracy, over-
and missed-intervention rates and the unparsed share. The loop logs them as ``steer/<name>`` in
metrics.jsonl and TensorBoard.

:class:`BestKeeper` follows ``checkpoint.keep_best_metric`` (a steering metric, or a held-out one:
``loss`` / ``first_token_accuracy``): each new best step is saved to ``RUN_DIR/best`` (an evaluable
run directory: ``python -m bsft_jax.evaluate --checkpoint RUN_DIR/best``), and after
``train.early_stop_patience`` evaluations without a new best the run stops. Its state lives in
``RUN_DIR/best.json`` so a resumed run keeps counting.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from flax import nnx

from bsft_jax import storage
from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.evaluate.core import as_records, evaluate_model, stratified_subset
from bsft_jax.files import write_json
from bsft_jax.setup.config import check_best_metric  # noqa: F401  (re-exported: the rule lives with resolve)
from bsft_jax.setup.settings import HELD_OUT_METRICS, STEER_METRICS, Settings
from bsft_jax.setup.sources import load_split

log = logging.getLogger("bsft_jax.train")

PREFIX = "steer/"
BEST_SUBDIR = "best"
BEST_STATE = "best.json"


def steer_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar steering metrics (fractions) of one :func:`compute_metrics` result; None values dropped."""
    out = {"overall_f1": metrics["overall_f1"],
           "behavior_accuracy": metrics["behavior"]["accuracy"] if metrics["behavior"] else None,
           "decision_accuracy": metrics["decision"]["accuracy"] if metrics.get("decision") else None,
           "over_intervention": metrics["over_intervention"]["rate"],
           "missed_intervention": metrics["missed_intervention"]["rate"],
           "unparsed": metrics["num_unparsed"] / metrics["num_items"],
           **{f"{g}_f1": v for g, v in metrics["per_group"].items()}}
    return {k: float(v) for k, v in out.items() if v is not None}


def per_category_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """``steer/f1/<category>`` and ``steer/decision/<category>`` (intervene-vs-hold accuracy, open
    categories only): what a learning curve plots per category (bench/learning_curve.py)."""
    out = {f"{PREFIX}f1/{c}": float(m["f1"]) for c, m in metrics["per_category"].items()}
    decision = metrics.get("decision") or {}
    out |= {f"{PREFIX}decision/{c}": float(v) for c, v in decision.get("per_category", {}).items()}
    return out


class SteerEval:
    """Generation-based evaluation of the current parameters on a fixed validation subset."""

    def __init__(self, settings: Settings, tokenizer: Any, mesh: Any, batch_size: int = 32):
        t, spec = settings.train, settings.behavior.spec
        source = load_split(settings.data, spec, t.steer_eval_split)
        self.records = stratified_subset(as_records(source, spec), t.steer_eval_items)
        self.tokenizer, self.mesh, self.spec = tokenizer, mesh, spec
        self.style, self.max_new_tokens, self.batch_size = settings.data.style, t.steer_max_new_tokens, batch_size

    def __call__(self, graphdef: Any, params: Any) -> dict[str, float]:
        """``steer/<metric>`` values of the model ``nnx.merge(graphdef, params)`` (parameters untouched)."""
        model = nnx.merge(graphdef, params)
        result = evaluate_model(model, self.tokenizer, self.records, name="steer", style=self.style, spec=self.spec,
                                mesh=self.mesh, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        return {PREFIX + k: v for k, v in steer_summary(result.metrics).items()} | {
            PREFIX + "seconds": float(result.info["decode seconds"])} | per_category_summary(result.metrics)


class BestKeeper:
    """Tracks the best value of one metric; saves each new best, counts evaluations since the last one."""

    def __init__(self, run_dir: str, metric: str, patience: int, *, primary: bool = True):
        self.run_dir, self.metric, self.patience = storage.abspath(run_dir), metric, patience
        self.primary = primary
        self.higher = STEER_METRICS.get(metric, HELD_OUT_METRICS.get(metric, True))
        self.key = PREFIX + metric if metric in STEER_METRICS else metric
        self.state: dict[str, Any] = {"metric": metric, "step": None, "value": None, "evals_since_best": 0}
        path = storage.join(self.run_dir, BEST_STATE)
        if storage.isfile(path):
            self.state.update(json.loads(storage.read_text(path)))
        self._ckpt: Checkpointer | None = None

    @property
    def directory(self) -> str:
        """``RUN_DIR/best``: config.json and the best step's checkpoint (the tokenizer is the run's)."""
        return storage.join(self.run_dir, BEST_SUBDIR)

    def is_better(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (any finite value beats none)."""
        best = self.state["value"]
        if not math.isfinite(value):
            return False
        return best is None or (value > best if self.higher else value < best)

    def update(self, step: int, metrics: dict[str, float], save: Callable[[Checkpointer], None]) -> bool:
        """Records one evaluation; calls ``save(checkpointer)`` on a new best. Returns True to stop early."""
        if self.key not in metrics:
            return False
        value = float(metrics[self.key])
        if self.is_better(value):
            self.state.update(step=int(step), value=value, evals_since_best=0)
            if self._ckpt is None:
                self._ckpt = Checkpointer(self.directory, keep=1, async_save=False)
                if self.primary:
                    storage.copy_file(storage.join(self.run_dir, "config.json"),
                                      storage.join(self.directory, "config.json"))
            save(self._ckpt)
            log.info("new best %s %.4f at step %d (saved to %s)", self.metric, value, step, self.directory)
        else:
            self.state["evals_since_best"] += 1
        if self.primary:
            write_json(storage.join(self.run_dir, BEST_STATE), self.state)
        stop = bool(self.patience) and self.state["evals_since_best"] >= self.patience
        if stop:
            log.info("early stop at step %d: %s has not improved on %.4f (step %d) for %d evaluations", step,
                     self.metric, self.state["value"], self.state["step"], self.state["evals_since_best"])
        return stop

    def close(self) -> None:
        """Waits for the best checkpoint's save."""
        if self._ckpt is not None:
            self._ckpt.close()
