"""Evaluation: ``core`` (generate, parse, score a model on records), ``metrics`` (macro-F1 and the
paper's tables), ``report`` (markdown, JSON, radar plot), ``probe`` (the steering probe), ``compare``
(the paper's comparison of the four arms: :func:`~bsft_jax.evaluate.compare.run_comparison`).
``python -m bsft_jax.evaluate`` is ``__main__`` (flag parsing only).

The package is named ``evaluate`` (not ``eval``) so that ``python -m bsft_jax.evaluate`` stays the command."""
