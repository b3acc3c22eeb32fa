"""How the next token is chosen: greedy, or temperature sampling restricted by top-k and/or top-p.

Logits of padded vocabulary rows are masked by the caller (:func:`bsft_jax.decode.loop.choose`) first,
so padding rows can never be generated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen (static: a new setting compiles once).

    temperature:  0 means greedy (argmax); > 0 divides the logits before sampling.
    top_k:        keep only the k most likely tokens (None: no limit). Ignored when greedy.
    top_p:        keep the smallest set of most likely tokens whose mass reaches p (None or 1: all).
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sample_logits(logits_bv: Array, key: Array, sampling: SamplingParams) -> Array:
    """Next token ids [B] (int32) from logits [B, V] (padded vocabulary rows already masked)."""
    if sampling.greedy:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    logits_bv = logits_bv.astype(jnp.float32) / sampling.temperature
    vocab = logits_bv.shape[-1]
    if sampling.top_k is not None and sampling.top_k < vocab:
        kth_b1 = jax.lax.top_k(logits_bv, sampling.top_k)[0][:, -1:]
        logits_bv = jnp.where(logits_bv < kth_b1, -jnp.inf, logits_bv)
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_bv = jnp.flip(jnp.sort(logits_bv, axis=-1), axis=-1)
        probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
        mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
        # The most likely token is always kept (its mass-before is 0 < top_p).
        threshold_b1 = jnp.min(jnp.where(mass_before_bv < sampling.top_p, sorted_bv, jnp.inf), axis=-1,
                               keepdims=True)
        logits_bv = jnp.where(logits_bv < threshold_b1, -jnp.inf, logits_bv)
    return jax.random.categorical(key, logits_bv, axis=-1).astype(jnp.int32)
