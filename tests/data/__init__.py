"""Tests of bsft_jax.data."""
