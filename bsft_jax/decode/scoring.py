"""Log-likelihood of given continuations: rank candidate answers (multiple-choice scoring).

``continuation_logprobs(model, prefixes, continuations)`` returns, for each pair, the summed
log p(continuation | prefix) under the model, from one jitted full forward pass per batch. Pairs are
right-padded to a bucketed length and batch size (as in :mod:`bsft_jax.decode`), so ranking many
items compiles a handful of programs, and padded vocabulary rows are masked before the softmax.
A :class:`Scorer` holds the placed weights and its compiled programs (as :class:`~bsft_jax.decode.Sampler`
does), so repeated scoring of one model splits it once; ``compile_counts()`` says what it compiled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from bsft_jax.decode.batching import (
    DEFAULT_MIN_PROMPT_BUCKET,
    batch_arrays,
    bucket_size,
    data_parallel_size,
    fetch,
    mesh_context,
    split_and_place,
)
from bsft_jax.models.decoder import Decoder
from bsft_jax.models.logits import mask_padded_logits

Array = jax.Array


def _token_logprobs(graphdef: nnx.GraphDef, params: nnx.State, tokens_bt: Array, mask_bt: Array) -> Array:
    model = nnx.merge(graphdef, params)
    logits_btv = model(tokens_bt, attention_mask=mask_bt)
    logits_btv = mask_padded_logits(logits_btv.astype(jnp.float32), model.config.valid_vocab_size)
    logprobs_btv = jax.nn.log_softmax(logits_btv[:, :-1], axis=-1)
    # log p(tokens[t + 1] | tokens[:t + 1]); the first position has no prediction, so it reads 0.
    next_bt = jnp.take_along_axis(logprobs_btv, tokens_bt[:, 1:, None], axis=-1)[..., 0]
    return jnp.pad(next_bt, ((0, 0), (1, 0)))


token_logprobs = jax.jit(_token_logprobs, static_argnames=("graphdef",))
token_logprobs.__doc__ = """[B, T] log p(token_t | tokens_<t) of right-padded rows (column 0 reads 0; jitted).

Args: ``graphdef, params = nnx.split(model)``; ``tokens_bt`` [B, T] int32; ``mask_bt`` [B, T] 1 for real tokens.
"""


class Scorer:
    """Continuation log-likelihoods for one model (optionally sharded over a mesh).

    model:          a :class:`Decoder`; its weights are split and placed on ``mesh`` once, here.
    mesh:           optional; the batch is sharded over the data axes (weights by the rules table).
    pad_id:         id written after each pair (masked out).
    length_buckets: ascending lengths to pad to, as ``prompt_buckets`` in :class:`bsft_jax.decode.Sampler`.
    batch_size:     pairs per device call.
    """

    def __init__(
        self,
        model: Decoder,
        *,
        mesh: Mesh | None = None,
        pad_id: int = 0,
        length_buckets: Sequence[int] | None = None,
        batch_size: int = 32,
    ):
        self.graphdef, self.params = split_and_place(model, mesh)
        self.mesh = mesh
        self.pad_id = int(pad_id)
        self.length_buckets = tuple(length_buckets) if length_buckets else None
        self.batch_size = int(batch_size)
        self.data_parallel = data_parallel_size(mesh)
        # Ahead-of-time executables keyed by the padded batch shape (b, t); freed with the Scorer.
        self._executables: dict[tuple[int, int], Any] = {}

    def __call__(self, prefixes: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[float]:
        """Summed log p(continuation | prefix) for each pair, in input order; both parts must be non-empty."""
        if len(prefixes) != len(continuations):
            raise ValueError(f"continuation_logprobs: {len(prefixes)} prefixes but {len(continuations)} "
                             "continuations")
        for i, (p, c) in enumerate(zip(prefixes, continuations)):
            if not p or not c:
                raise ValueError(f"continuation_logprobs: pair {i} has an empty prefix or continuation")
        scores: list[float] = []
        for lo in range(0, len(prefixes), self.batch_size):
            pairs = list(zip(prefixes[lo:lo + self.batch_size], continuations[lo:lo + self.batch_size]))
            logprobs_bt = self._batch_logprobs(pairs)
            for i, (p, c) in enumerate(pairs):
                scores.append(float(logprobs_bt[i, len(p): len(p) + len(c)].sum()))
        return scores

    def compile_counts(self) -> dict[str, int]:
        """How many programs this Scorer has compiled (one per padded batch shape)."""
        return {"token_logprobs": len(self._executables)}

    def _batch_logprobs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> np.ndarray:
        """[b, t] token log-probs of the pairs, right-padded to bucketed b and t (on the host)."""
        b = bucket_size(len(pairs), multiple=self.data_parallel)
        t = bucket_size(max(len(p) + len(c) for p, c in pairs), self.length_buckets,
                        minimum=DEFAULT_MIN_PROMPT_BUCKET, half_steps=True)
        tokens_bt = np.full((b, t), self.pad_id, np.int32)
        mask_bt = np.zeros((b, t), np.int32)
        for i, (p, c) in enumerate(pairs):
            seq = [*p, *c]
            tokens_bt[i, : len(seq)], mask_bt[i, : len(seq)] = seq, 1
        arrays = batch_arrays((tokens_bt, mask_bt), self.mesh)
        with mesh_context(self.mesh):
            run = self._executables.get((b, t))
            if run is None:
                run = self._executables[(b, t)] = token_logprobs.lower(self.graphdef, self.params, *arrays).compile()
            return fetch(run(self.params, *arrays))


def continuation_logprobs(
    model: Decoder,
    prefixes: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    mesh: Mesh | None = None,
    pad_id: int = 0,
    length_buckets: Sequence[int] | None = None,
    batch_size: int = 32,
) -> list[float]:
    """Summed log p(continuation | prefix) for each (prefix, continuation) pair, in input order.

    Both parts must be non-empty. ``mesh`` shards the batch over the data axes (weights by the rules
    table); ``length_buckets`` as ``prompt_buckets`` in :class:`bsft_jax.decode.Sampler`. One call of a
    fresh :class:`Scorer`; build a Scorer to score one model repeatedly.
    """
    scorer = Scorer(model, mesh=mesh, pad_id=pad_id, length_buckets=length_buckets, batch_size=batch_size)
    return scorer(prefixes, continuations)
