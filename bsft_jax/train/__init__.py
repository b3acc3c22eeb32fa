"""Training: ``loop`` (:func:`run`), ``step`` (the jitted :class:`Trainer`), ``loss``, ``optim``,
``data`` (config -> batch iterators), ``log`` (metrics files, progress), ``distributed`` (multi-host
set-up and shards), ``plan`` (the memory planner). ``python -m bsft_jax.train`` is ``__main__``."""

from bsft_jax.train.loop import NonFiniteLossError, TrainResult, run

__all__ = ["NonFiniteLossError", "TrainResult", "run"]
