"""Trainable rows of a frozen embedding table: the behavior tokens of a LoRA run.

A LoRA run trains the adapters and the R behavior-token rows of the embedding (and, for an untied
head, the same columns of ``lm_head``) while every other row stays the base's. Scattering the rows
into the table (``table.at[ids].set(rows)``) would make the whole [V, D] table a function of the
trained rows: the backward pass then computes the LM head's full weight gradient (``x^T dlogits``,
as many FLOPs as the head's forward) and scatters the embedding gradient into a [V, D] table, only
to keep R rows of both. Here the table stays frozen and the rows are their own parameters:

* lookup: ``where(token in ids, rows[k], table[token])``;
* head: ``x . table^T`` with the R columns replaced by ``x . rows^T``
  (:class:`~bsft_jax.models.layers.PatchedColumns`),

so the rows' gradients are [R, D] products and the frozen table gets none. Outputs are those of the
table with the rows scattered in (the rows are cast to the table's dtype first, as the scatter did).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bsft_jax.models.layers import PatchedColumns

Array = jax.Array


class TrainableRows(nnx.Module):
    """Rows ``ids`` of the embedding (``embed [R, D]``) and, untied, of the head (``lm_head [D, R]``).

    ``ids`` (ascending, static) are part of the graph; the values start at zero (the trainer fills
    them from the base table).
    """

    def __init__(self, ids: Sequence[int], hidden_size: int, *, tied: bool, param_dtype: Any):
        self.ids = tuple(sorted(int(i) for i in ids))
        r = len(self.ids)
        self.embed = nnx.Param(jnp.zeros((r, hidden_size), param_dtype), logical_axes=(None, "embed"))
        if not tied:
            self.lm_head = nnx.Param(jnp.zeros((hidden_size, r), param_dtype), logical_axes=("embed", None))

    def lookup(self, table_vd: Array, input_ids: Array) -> Array:
        """Embeddings [..., D] of ``input_ids`` in the table's dtype: the frozen table's, these rows' where ids match.

        The rows enter through a one-hot [..., R] product (an exact selection), so their gradient is a
        [R, D] matmul rather than a scatter.
        """
        x = jnp.take(jax.lax.stop_gradient(table_vd), input_ids, axis=0)
        hit = input_ids[..., None] == jnp.asarray(np.asarray(self.ids, np.int32))  # [..., R]
        rows = jnp.einsum("...r,rd->...d", hit.astype(table_vd.dtype), self.embed.value.astype(table_vd.dtype),
                          precision=jax.lax.Precision.HIGHEST)  # exact: no TF32 / bf16 passes on accelerators
        return jnp.where(jnp.any(hit, axis=-1, keepdims=True), rows, x)

    def head(self, head_dv: Array, source_dtype: Any) -> PatchedColumns:
        """The head ``head_dv [D, V]`` (frozen, compute dtype) with these rows' columns.

        ``source_dtype``: the frozen table's dtype, which the rows pass through on their way to the
        compute dtype (as rows scattered into that table would)."""
        cols = self.embed.value.T if not hasattr(self, "lm_head") else self.lm_head.value
        return PatchedColumns(base=head_dv, cols=cols.astype(source_dtype).astype(head_dv.dtype), ids=self.ids)
