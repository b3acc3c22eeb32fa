"""Evaluation: ``core`` (generate, parse, score a model on records), ``metrics`` (macro-F1 and the
paper's tables), ``report`` (markdown, JSON, radar plot). ``python -m bsft_jax.evaluate`` is ``__main__``.

The package is named ``evaluate`` (not ``eval``) so that ``python -m bsft_jax.evaluate`` stays the command."""
