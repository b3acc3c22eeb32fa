"""Helpers on the decoder's output logits, shared by the loss, the sampler and scoring."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_padded_logits(logits: jax.Array, num_valid: int | None) -> jax.Array:
    """Sets logits of rows that belong to no token (index >= num_valid) to the dtype's minimum."""
    if num_valid is None or num_valid >= logits.shape[-1]:
        return logits
    valid = jnp.arange(logits.shape[-1]) < num_valid
    return jnp.where(valid, logits, jnp.finfo(logits.dtype).min)
