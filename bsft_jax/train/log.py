"""Progress lines and metric files of a training run (process 0 only).

``RUN_DIR/metrics.jsonl`` (on a ``gs://`` run directory: re-uploaded every 30 s and at the end,
see :class:`bsft_jax.storage.AppendLog`) gets one JSON object per training step (``{"split": "train", "step":
..., "loss": ..., ...}``) and one per evaluation (``"split": "eval"``): a user plots loss curves
from it with a few lines of pandas/matplotlib. ``RUN_DIR/tensorboard/`` holds the same scalars as
TensorBoard event files (``tensorboard --logdir RUN_DIR/tensorboard``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from bsft_jax import storage

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m12s`` or ``45s``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class MetricsLogger:
    """Writes metrics as JSONL and TensorBoard scalars; a no-op on processes other than 0."""

    def __init__(self, run_dir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        storage.makedirs(run_dir)
        self._jsonl = storage.AppendLog(storage.join(run_dir, "metrics.jsonl"))
        if tensorboard:  # tensorboardX writes gs:// itself (needs google-cloud-storage: the gcs extra)
            from tensorboardX import SummaryWriter  # import-time cost (seconds): only for runs that log to it

            self._tb = SummaryWriter(storage.join(run_dir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any], *, split: str = "train") -> None:
        """Appends one record; scalars also go to TensorBoard as ``split/name``."""
        if not self.enabled:
            return
        record = {"split": split, "step": int(step), "time": round(time.time(), 3)}
        record.update({k: _jsonable(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("split", "step", "time") and isinstance(v, int | float):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def flush(self) -> None:
        """Pushes buffered metrics and TensorBoard events to disk (or the bucket)."""
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Closes the files."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _jsonable(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if isinstance(v, bool | int) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "f") in "iu"):
        return int(f)
    return f if math.isfinite(f) else str(f)


class Progress:
    """Throughput and ETA over the steps of this process's run (resumed runs count from the resume step)."""

    def __init__(self, total_steps: int, start_step: int):
        self.total = total_steps
        self.start_step = start_step
        self.t0 = time.perf_counter()
        self.window_t = self.t0
        self.window_tokens = 0.0
        self.tokens_per_second = 0.0

    def update(self, input_tokens: float) -> None:
        """Counts one finished step and its input tokens."""
        self.window_tokens += input_tokens

    def line(self, step: int, metrics: dict[str, Any]) -> str:
        """``step 120/1000 | loss 2.3412 | lr 1.00e-04 | 12,345 tok/s | ETA 3m12s``; resets the window."""
        now = time.perf_counter()
        dt = max(now - self.window_t, 1e-9)
        self.tokens_per_second = self.window_tokens / dt
        done = step - self.start_step
        per_step = (now - self.t0) / max(done, 1)
        eta = per_step * (self.total - step)
        self.window_t, self.window_tokens = now, 0.0
        return (f"step {step}/{self.total} | loss {float(metrics['loss']):.4f} | "
                f"acc {float(metrics['accuracy']):.3f} | lr {float(metrics['learning_rate']):.2e} | "
                f"gnorm {float(metrics['grad_norm']):.3f} | {self.tokens_per_second:,.0f} tok/s | "
                f"ETA {format_duration(eta)}")
