"""Benchmarks of bsft_jax against the PyTorch/transformers reference (results in BENCHMARKS.md)."""
