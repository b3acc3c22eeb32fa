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
        logits_bv = top_p_filter(logits_bv, sampling.top_p)
    return jax.random.categorical(key, logits_bv, axis=-1).astype(jnp.int32)


def top_p_filter(logits_bv: Array, top_p: float | Array) -> Array:
    """``logits_bv`` with every token outside the top-p nucleus set to -inf.

    ``top_p`` is one number or a [B, 1] array (one per row; 1 keeps every token of that row).
    """
    sorted_bv = jnp.flip(jnp.sort(logits_bv, axis=-1), axis=-1)
    probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
    mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
    # The most likely token is always kept (its mass-before is 0 < top_p).
    threshold_b1 = jnp.min(jnp.where(mass_before_bv < top_p, sorted_bv, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_bv < threshold_b1, -jnp.inf, logits_bv)


def sample_rows(logits_bv: Array, seed_b: Array, position: Array, temperature_b: Array, top_p_b: Array) -> Array:
    """Next token ids [B] with per-row settings, all traced (a new value never recompiles).

    Row b is greedy (argmax) when ``temperature_b[b] == 0``; otherwise it samples softmax(logits /
    temperature) within its top-p nucleus (``top_p_b[b]``, 1 = all tokens) with the key
    ``fold_in(key(seed_b[b]), position)``: a row's tokens depend on its own seed and logits only,
    never on which other rows share the batch. Greedy rows give exactly :func:`sample_logits`'s
    greedy choice. The sort of the nucleus runs only when some sampling row asks for it.
    """
    greedy_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)

    def sample(logits_bv: Array) -> Array:
        sampling_b = temperature_b > 0
        scaled_bv = logits_bv.astype(jnp.float32) / jnp.where(sampling_b, temperature_b, 1.0)[:, None]
        needs_nucleus = jnp.any(sampling_b & (top_p_b < 1))
        scaled_bv = jax.lax.cond(needs_nucleus, lambda x: top_p_filter(x, top_p_b[:, None]), lambda x: x, scaled_bv)
        keys_b = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), position))(seed_b)
        drawn_b = jax.vmap(lambda k, row: jax.random.categorical(k, row))(keys_b, scaled_bv).astype(jnp.int32)
        return jnp.where(sampling_b, drawn_b, greedy_b)

    return jax.lax.cond(jnp.any(temperature_b > 0), sample, lambda _: greedy_b, logits_bv)
