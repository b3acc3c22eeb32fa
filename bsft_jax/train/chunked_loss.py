"""The loss from final hidden states, never materialising the [B, T, V] logits.

``loss_impl="full"`` (:func:`bsft_jax.train.loss.loss_sums`) runs the LM head on every position and
keeps fp32 logits [B, T, V] alive for the backward pass: with a 49k-152k vocabulary that tensor is
the largest activation of an SFT step, and in SFT only the assistant tokens (10-20% of positions)
carry loss. This module computes the same :class:`~bsft_jax.train.loss.LossSums` in two steps:

1. **Gather** the loss-masked positions into a static budget of ``ceil(budget * B * T)`` rows
   (rounded up to the chunk size). All the sums (CE, z, accuracies) live on masked positions only,
   so nothing is lost. A batch with more masked tokens than the budget takes the exact fallback: a
   ``lax.cond`` runs the same computation over all B * T positions.
2. **Chunk** those rows: a ``lax.scan`` over chunks of ``chunk`` rows computes the head, the
   masked logsumexp, the target logit and the row max of one chunk and keeps only those [C] vectors;
   the body is ``jax.checkpoint``-ed, so the backward pass recomputes one chunk's [C, V] logits at a
   time (MaxText's vocabulary tiling / Liger's fused linear cross-entropy, here tiled over tokens).

Peak loss memory drops from O(B T V) to O(C V); FLOPs of the head drop by the budget fraction (the
backward recomputes the chunk's forward matmul: one extra head matmul over the gathered rows only).
Numerics are the full path's: the same ``project`` in ``logits_dtype``, fp32 softmax statistics.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from bsft_jax.models.decoder import Decoder, project
from bsft_jax.models.logits import mask_padded_logits
from bsft_jax.train.loss import LossSums, first_target_mask, loss_sums

LOSS_IMPLS = ("full", "chunked")


def head_weight(model: Decoder, dtype: Any) -> jax.Array:
    """The LM head as ``[D, V]`` in ``dtype`` (the transposed embedding table when tied), as ``Decoder.logits``."""
    return model.head_weight(dtype)


def _chunk_stats(x_cd: jax.Array, w_dv: jax.Array, targets_c: jax.Array, valid_vocab: int | None,
                 logits_dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(logsumexp, target logit, row max) [C] of one chunk, all fp32."""
    logits_cv = project(x_cd, w_dv, 1, logits_dtype).astype(jnp.float32)
    logits_cv = mask_padded_logits(logits_cv, valid_vocab)
    lse_c = jax.nn.logsumexp(logits_cv, axis=-1)
    target_c = jnp.take_along_axis(logits_cv, targets_c[:, None], axis=-1)[:, 0]
    return lse_c, target_c, jnp.max(logits_cv, axis=-1)


def _sums_over_rows(x_nd: jax.Array, w_dv: jax.Array, targets_n: jax.Array, mask_n: jax.Array,
                    first_n: jax.Array, *, chunk: int, valid_vocab: int | None, logits_dtype: Any) -> LossSums:
    """LossSums over N rows (N a multiple of ``chunk``), one checkpointed chunk of logits at a time."""
    n, d = x_nd.shape
    # The weight is an explicit argument (not a closure) so that remat saves nothing of it per chunk.
    stats = jax.checkpoint(lambda x, w, t: _chunk_stats(x, w, t, valid_vocab, logits_dtype), prevent_cse=False)

    def body(w: jax.Array, xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        return w, stats(xs[0], w, xs[1])

    x_kcd = x_nd.reshape(n // chunk, chunk, d)
    _, (lse, target, row_max) = jax.lax.scan(body, w_dv, (x_kcd, targets_n.reshape(n // chunk, chunk)))
    lse, target, row_max = lse.reshape(n), target.reshape(n), row_max.reshape(n)
    # "argmax == target" as "target logit reaches the row max", as the full path (ties count as hits).
    hit = (target >= row_max).astype(jnp.float32)
    return LossSums(
        ce=jnp.sum((lse - target) * mask_n),
        z=jnp.sum(jnp.square(lse) * mask_n),
        tokens=jnp.sum(mask_n),
        correct=jnp.sum(hit * mask_n),
        first_correct=jnp.sum(hit * first_n),
        first_tokens=jnp.sum(first_n),
        first_ce=jnp.sum((lse - target) * first_n),
    )


def budget_rows(num_positions: int, budget: float, chunk: int) -> int:
    """Static row count of the gathered set: ``ceil(budget * positions)`` rounded up to ``chunk``."""
    rows = max(1, math.ceil(budget * num_positions))
    return min(-(-rows // chunk) * chunk, -(-num_positions // chunk) * chunk)


def _pad_rows(a: jax.Array, rows: int) -> jax.Array:
    return jnp.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1))


def chunked_loss_sums(
    hidden_btd: jax.Array,
    w_dv: jax.Array,
    targets_bt: jax.Array,
    loss_mask_bt: jax.Array,
    segment_ids_bt: jax.Array,
    *,
    valid_vocab_size: int | None = None,
    chunk: int = 1024,
    budget: float = 1.0,
    logits_dtype: Any = jnp.float32,
) -> LossSums:
    """:func:`bsft_jax.train.loss.loss_sums` of ``project(hidden, w_dv)`` without building [B, T, V].

    hidden_btd: [B, T, D] final normed hidden states (``Decoder(..., return_hidden=True)``).
    w_dv:       [D, V] head weight in the compute dtype (:func:`head_weight`).
    chunk:      rows of logits alive at a time ([chunk, V] fp32).
    budget:     fraction of the B * T positions gathered for the loss (1.0: no gathering); a batch
                with more loss tokens than that takes the exact all-positions fallback.
    """
    b, t, d = hidden_btd.shape
    n = b * t
    chunk = max(1, min(int(chunk), n))
    mask_n = loss_mask_bt.reshape(n).astype(jnp.float32)
    first_n = first_target_mask(loss_mask_bt, segment_ids_bt).reshape(n).astype(jnp.float32)
    x_nd, targets_n = hidden_btd.reshape(n, d), targets_bt.reshape(n).astype(jnp.int32)
    run = dict(chunk=chunk, valid_vocab=valid_vocab_size, logits_dtype=logits_dtype)
    all_rows = -(-n // chunk) * chunk

    def everything() -> LossSums:
        return _sums_over_rows(_pad_rows(x_nd, all_rows), w_dv, _pad_rows(targets_n, all_rows),
                               _pad_rows(mask_n, all_rows), _pad_rows(first_n, all_rows), **run)

    rows = budget_rows(n, budget, chunk)
    if rows >= all_rows:
        return everything()

    def gathered() -> LossSums:
        # Indices of the masked positions first (in order), then fillers whose weights are zero.
        (idx,) = jnp.nonzero(mask_n != 0, size=rows, fill_value=0)
        keep = (jnp.arange(rows) < jnp.sum(mask_n != 0)).astype(jnp.float32)
        return _sums_over_rows(x_nd[idx], w_dv, targets_n[idx], mask_n[idx] * keep, first_n[idx] * keep, **run)

    return jax.lax.cond(jnp.sum(mask_n != 0) > rows, everything, gathered)


def model_loss_sums(model: Decoder, batch: dict[str, jax.Array], *, impl: str = "full", chunk: int = 1024,
                    budget: float = 1.0, **call_kwargs: Any) -> LossSums:
    """LossSums of ``model`` on one (micro)batch with the chosen loss path (``LOSS_IMPLS``).

    ``call_kwargs``: extra arguments of the model's call (e.g. ``dropout_rng`` for LoRA dropout).
    """
    valid_vocab = model.config.valid_vocab_size
    kwargs = dict(positions=batch["positions"], segment_ids=batch["segment_ids"], **call_kwargs)
    if impl == "full":
        logits = model(batch["tokens"], **kwargs)
        return loss_sums(logits, batch["targets"], batch["loss_mask"], batch["segment_ids"],
                         valid_vocab_size=valid_vocab)
    if impl != "chunked":
        raise ValueError(f"loss_impl must be one of {LOSS_IMPLS}, got {impl!r}")
    hidden = model(batch["tokens"], return_hidden=True, **kwargs)
    return chunked_loss_sums(hidden, head_weight(model, hidden.dtype), batch["targets"], batch["loss_mask"],
                             batch["segment_ids"], valid_vocab_size=valid_vocab, chunk=chunk, budget=budget,
                             logits_dtype=jnp.dtype(model.config.logits_dtype))
