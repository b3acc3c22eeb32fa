"""The server's device side: a batch of chat requests prefilled together, then decoded a few steps per call.

Static batching: the rows that start together are prefilled in one call and decoded together until the
last of them is done; requests arriving meanwhile wait for the next batch (the
:mod:`~bsft_jax.serve.batcher` collects them). A row that finishes early, is cancelled (its client
went away, a stop string matched) or runs out of its own ``max_tokens`` is marked done and emits
padding; when every row is done the batch ends at once.

Why not :class:`bsft_jax.decode.Sampler` as it is: it runs the whole ``while_loop`` in one device call
(no tokens to stream until the end, no way to cancel a row) and its sampling settings are static (a
request with a new temperature would compile a new program). Here the same pieces (the per-layer
:class:`~bsft_jax.decode.layered.LayeredDecoder` split once by
:func:`~bsft_jax.decode.batching.split_and_place`, its :class:`~bsft_jax.decode.layered.LayerCache`,
left padding, the bucket sizes of :func:`~bsft_jax.decode.batching.bucket_size`, the padded-vocabulary
mask and the first-token forcing of :func:`bsft_jax.decode.loop.prefill`) are run as :func:`prefill`,
then :func:`decode_chunk` (``chunk`` steps of a ``lax.while_loop`` per call, state donated), with the
temperature, top-p, seed and token budget of each row as traced arrays
(:func:`~bsft_jax.decode.sampling.sample_rows`). Shapes are bucketed: batch size (powers of two up to
``max_batch_size``), prompt length (the Sampler's buckets) and token budget (same rule), so traffic
compiles at most one program per bucket (:meth:`Engine.compile_counts`).

Greedy rows choose exactly as :func:`bsft_jax.generate` does (argmax of the masked fp32 logits), so a
greedy reply equals ``bsft_jax.generate`` on the same prompt token for token.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bsft_jax.decode.batching import DEFAULT_MIN_PROMPT_BUCKET, bucket_size, fetch, split_and_place
from bsft_jax.decode.layered import LayerCache, unstack_layers
from bsft_jax.decode.loop import constrain_cache
from bsft_jax.decode.sampling import sample_rows
from bsft_jax.models.decoder import Decoder
from bsft_jax.models.logits import mask_padded_logits

Array = jax.Array
log = logging.getLogger("bsft_jax.serve")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BatchState:
    """What the decode calls carry for one batch (donated from call to call).

    step:          [] int32        columns of ``tokens_bn`` written so far.
    done_b:        [B] bool        the row is finished (EOS, budget, cancelled, or batch padding).
    tokens_bn:     [B, N] int32    generated ids; ``pad_id`` after a row is done.
    cache:         LayerCache      per-layer keys/values of the prompt and every fed token.
    seed_b:        [B] uint32      each row's sampling seed.
    temperature_b: [B] f32         0 = greedy.
    top_p_b:       [B] f32         nucleus mass (1 = every token).
    limit_b:       [B] int32       each row's token budget (<= N); 0 for batch-padding rows.
    """

    step: Array
    done_b: Array
    tokens_bn: Array
    cache: LayerCache
    seed_b: Array
    temperature_b: Array
    top_p_b: Array
    limit_b: Array


def _choose(model: Any, logits_bv: Array, state_like: dict[str, Array], position: Array) -> Array:
    logits_bv = mask_padded_logits(logits_bv.astype(jnp.float32), model.config.valid_vocab_size)
    return sample_rows(logits_bv, state_like["seed_b"], position, state_like["temperature_b"], state_like["top_p_b"])


def _prefill(graphdef: nnx.GraphDef, params: nnx.State, prompt_bt: Array, mask_bt: Array, force_b: Array,
             seed_b: Array, temperature_b: Array, top_p_b: Array, limit_b: Array, eos_e: Array, *,
             max_new_tokens: int, pad_id: int) -> BatchState:
    model = nnx.merge(graphdef, params)
    b, t = prompt_bt.shape
    cache = constrain_cache(LayerCache.init(model.config, b, t + max_new_tokens))
    hidden_btd, cache = model(prompt_bt, attention_mask=mask_bt, cache=cache, return_hidden=True)
    logits_bv = model.logits(hidden_btd[:, -1:])[:, 0]
    rows = dict(seed_b=seed_b, temperature_b=temperature_b, top_p_b=top_p_b)
    token_b = _choose(model, logits_bv, rows, jnp.zeros((), jnp.int32))
    token_b = jnp.where(force_b >= 0, force_b, token_b)  # the evaluator's forcing (bsft_jax.decode.loop.prefill)
    active_b = limit_b > 0
    token_b = jnp.where(active_b, token_b, pad_id)
    return BatchState(
        step=jnp.ones((), jnp.int32),
        done_b=~active_b | jnp.isin(token_b, eos_e) | (limit_b <= 1),
        tokens_bn=jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token_b),
        cache=constrain_cache(cache),
        seed_b=seed_b, temperature_b=temperature_b, top_p_b=top_p_b, limit_b=limit_b,
    )


def _decode_chunk(graphdef: nnx.GraphDef, params: nnx.State, state: BatchState, eos_e: Array, cancel_b: Array, *,
                  chunk: int, pad_id: int) -> BatchState:
    model = nnx.merge(graphdef, params)
    max_new_tokens = state.tokens_bn.shape[1]
    end = jnp.minimum(state.step + chunk, max_new_tokens)
    rows = dict(seed_b=state.seed_b, temperature_b=state.temperature_b, top_p_b=state.top_p_b)

    def cond(s: BatchState) -> Array:
        return (s.step < end) & ~jnp.all(s.done_b)

    def body(s: BatchState) -> BatchState:
        last_b1 = jax.lax.dynamic_slice_in_dim(s.tokens_bn, s.step - 1, 1, axis=1)
        logits_b1v, cache = model(last_b1, cache=s.cache)
        token_b = jnp.where(s.done_b, pad_id, _choose(model, logits_b1v[:, 0], rows, s.step))
        done_b = s.done_b | jnp.isin(token_b, eos_e) | (s.step + 1 >= s.limit_b)
        return dataclasses.replace(
            s, step=s.step + 1, done_b=done_b, cache=constrain_cache(cache),
            tokens_bn=jax.lax.dynamic_update_slice_in_dim(s.tokens_bn, token_b[:, None], s.step, axis=1))

    return jax.lax.while_loop(cond, body, dataclasses.replace(state, done_b=state.done_b | cancel_b))


prefill = jax.jit(_prefill, static_argnames=("graphdef", "max_new_tokens", "pad_id"))
decode_chunk = jax.jit(_decode_chunk, static_argnames=("graphdef", "chunk", "pad_id"), donate_argnames=("state",))


@dataclasses.dataclass(frozen=True)
class Row:
    """One request as the device sees it: prompt ids and how to generate (all per row, all traced)."""

    prompt: Sequence[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    force_first_token: int | None = None


@dataclasses.dataclass
class RunningBatch:
    """A batch on the device: its state, the host's copy of what was generated, and its buckets."""

    state: BatchState
    rows: int
    shape: tuple[int, int, int]  # (batch bucket, prompt bucket, token-budget bucket)
    limits: list[int]
    tokens: list[list[int]]
    done: list[bool]


class Engine:
    """Bucketed, chunked batch decoding of one model (single device; the server's only device user).

    model:           a :class:`~bsft_jax.models.decoder.Decoder` (split into per-layer weights once).
    eos_ids:         ids that end a reply (the run's stop tokens and the template's end of turn).
    pad_id:          id for left padding and after a row is done (never fed as a real token).
    max_batch_size:  rows per batch; batch sizes are padded to powers of two up to it.
    chunk:           decode steps per device call: tokens stream out (and cancellations take effect)
                     every ``chunk`` tokens.
    """

    def __init__(self, model: Decoder, *, eos_ids: Sequence[int], pad_id: int = 0, max_batch_size: int = 8,
                 chunk: int = 8):
        if max_batch_size < 1 or chunk < 1:
            raise ValueError(f"Engine: max_batch_size and chunk must be >= 1, got {max_batch_size}, {chunk}")
        self.config = model.config
        self.graphdef, self.params = split_and_place(unstack_layers(model), None)
        self.eos_e = np.asarray(sorted({int(e) for e in eos_ids}), np.int32)
        self.pad_id, self.max_batch_size, self.chunk = int(pad_id), int(max_batch_size), int(chunk)
        self._compiled: set[tuple] = set()
        self.compile_seconds = 0.0

    def shape_for(self, rows: Sequence[Row]) -> tuple[int, int, int]:
        """(batch, prompt length, token budget) buckets a batch of ``rows`` is padded to."""
        b = min(bucket_size(len(rows)), bucket_size(self.max_batch_size))
        t = bucket_size(max(len(r.prompt) for r in rows), minimum=DEFAULT_MIN_PROMPT_BUCKET, half_steps=True)
        n = bucket_size(max(r.max_tokens for r in rows), minimum=DEFAULT_MIN_PROMPT_BUCKET, half_steps=True)
        return b, t, n

    def compile_counts(self) -> dict[str, int]:
        """Programs compiled so far per phase (one per bucket shape)."""
        return {name: sum(key[0] == name for key in self._compiled) for name in ("prefill", "decode_chunk")}

    def _timed(self, key: tuple, run: Any) -> Any:
        """Runs ``run()``; the first call of a shape is logged with its (compile-dominated) time."""
        if key in self._compiled:
            return run()
        start = time.perf_counter()
        out = jax.block_until_ready(run())
        seconds = time.perf_counter() - start
        self._compiled.add(key)
        self.compile_seconds += seconds
        log.info("compiled %s for batch %d, prompt %d, budget %d in %.1fs", key[0], *key[1], seconds)
        return out

    def start(self, rows: Sequence[Row]) -> RunningBatch:
        """Prefills ``rows`` (at most ``max_batch_size``) and samples their first tokens."""
        if not 1 <= len(rows) <= self.max_batch_size:
            raise ValueError(f"Engine.start: {len(rows)} rows; 1 to {self.max_batch_size} per batch")
        b, t, n = shape = self.shape_for(rows)
        prompt_bt = np.full((b, t), self.pad_id, np.int32)
        mask_bt = np.zeros((b, t), np.int32)
        mask_bt[len(rows):, -1] = 1  # batch-padding rows hold one (pad) token so no row is empty
        force_b = np.full((b,), -1, np.int32)
        seed_b = np.zeros((b,), np.uint32)
        temperature_b = np.zeros((b,), np.float32)
        top_p_b = np.ones((b,), np.float32)
        limit_b = np.zeros((b,), np.int32)
        for i, r in enumerate(rows):
            if not r.prompt or not 1 <= r.max_tokens <= n:
                raise ValueError(f"Engine.start: row {i} needs a prompt and 1 <= max_tokens <= {n}")
            prompt_bt[i, t - len(r.prompt):] = r.prompt
            mask_bt[i, t - len(r.prompt):] = 1
            force_b[i] = -1 if r.force_first_token is None else int(r.force_first_token)
            seed_b[i], temperature_b[i], top_p_b[i], limit_b[i] = r.seed % 2**32, r.temperature, r.top_p, r.max_tokens
        state = self._timed(("prefill", shape), lambda: prefill(
            self.graphdef, self.params, prompt_bt, mask_bt, force_b, seed_b, temperature_b, top_p_b, limit_b,
            self.eos_e, max_new_tokens=n, pad_id=self.pad_id))
        batch = RunningBatch(state=state, rows=len(rows), shape=shape, limits=[r.max_tokens for r in rows],
                             tokens=[[] for _ in rows],
                             done=[False] * len(rows))
        self._read(batch, 0)
        return batch

    def step(self, batch: RunningBatch, cancel: Sequence[int] = ()) -> list[list[int]]:
        """Decodes up to ``chunk`` more tokens; ``cancel`` lists rows to stop first. Returns each row's new ids."""
        cancel_b = np.zeros((batch.shape[0],), bool)
        for i in cancel:
            cancel_b[i] = True
            batch.done[i] = True
        before = int(batch.state.step)
        batch.state = self._timed(("decode_chunk", batch.shape), lambda: decode_chunk(
            self.graphdef, self.params, batch.state, self.eos_e, cancel_b, chunk=self.chunk, pad_id=self.pad_id))
        return self._read(batch, before)

    def _read(self, batch: RunningBatch, before: int) -> list[list[int]]:
        """Copies columns ``before..step`` to the host; marks rows done; returns each row's new ids."""
        step, done_b, tokens_bn = fetch((batch.state.step, batch.state.done_b, batch.state.tokens_bn))
        eos = set(self.eos_e.tolist())
        new: list[list[int]] = []
        for i in range(batch.rows):
            if batch.done[i]:  # finished or cancelled before this call: whatever follows is padding
                new.append([])
                continue
            fresh = tokens_bn[i, before:int(step)].tolist()[: batch.limits[i] - len(batch.tokens[i])]
            end = next((j + 1 for j, tok in enumerate(fresh) if tok in eos), len(fresh))
            fresh = fresh[:end]
            batch.tokens[i].extend(fresh)
            hit_eos = bool(fresh) and fresh[-1] in eos
            batch.done[i] = bool(done_b[i]) or hit_eos or len(batch.tokens[i]) >= batch.limits[i]
            new.append(fresh)
        return new

    def finished(self, batch: RunningBatch) -> bool:
        """Every real row is done (EOS, budget or cancelled)."""
        return all(batch.done)
