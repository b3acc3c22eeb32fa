"""KV-cache generation: a jitted prefill, then a ``jax.lax.while_loop`` over a small decode state.

Two layers:

* Array in / array out (jitted, what a serving loop or a benchmark calls): :func:`prefill` runs the
  left-padded prompts through the model once, fills a :class:`~bsft_jax.models.decoder.KVCache`
  and samples the first token; :func:`decode_loop` then generates one token per iteration of a
  ``lax.while_loop`` over a :class:`DecodeState` until every row is done or the token budget is
  spent. Both take the model as ``(graphdef, params)`` (``nnx.split``): the graph definition is a
  static argument and the weights a traced one, so weights are never baked into the program and
  a second model of the same shape reuses the compiled code. The decode state (cache included) is
  donated to the loop.
* Lists in / lists out: :class:`Sampler` (holds the split model, placed on a mesh if one is given)
  and the one-call :func:`generate`. They left-pad ragged prompts to a *bucketed* length and
  batch size, so that a new prompt length inside a bucket does not recompile, and trim each row
  after its first EOS.

Left padding makes every row's last prompt token sit in the same column, so all rows write the
same cache slot each step (the decoder's cache contract). Rows that emit an EOS are marked done;
from then on they emit ``pad_id`` (their model outputs are ignored), and since attention never
crosses rows they cannot change any other row's tokens.

Sampling: greedy (``temperature == 0``) or temperature sampling restricted by top-k and/or top-p,
from one PRNG key split once per step. Logits of padded vocabulary rows (``config.valid_vocab_size``)
are masked before anything else, so padding rows can never be generated.

:func:`trace_counts` reports how many times each jitted function has been traced (= compiled for a
new shape or static setting); tests read it to check bucketing. The Sampler compiles ahead of time
(``lower().compile()``, cached per bucket) so that it can report compile time apart from decode time.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from bsft_jax.behavior import mask_padded_logits
from bsft_jax.models.decoder import Decoder, KVCache
from bsft_jax.sharding import constrain, logical_to_spec, state_shardings

Array = jax.Array

DEFAULT_MIN_PROMPT_BUCKET = 16
_TRACES: collections.Counter[str] = collections.Counter()
# Ahead-of-time executables of the Sampler, keyed by model graph, mesh, bucket and static settings
# (like jit's own cache, but compiling explicitly lets the Sampler time compilation separately).
_EXECUTABLES: dict[tuple, Any] = {}


def trace_counts() -> dict[str, int]:
    """How many times :func:`prefill` and :func:`decode_loop` have been traced in this process."""
    return {"prefill": _TRACES["prefill"], "decode_loop": _TRACES["decode_loop"]}


# ----------------------------------------------------------------------------- sampling
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


# ----------------------------------------------------------------------------- decode state
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    """Everything the decode loop carries (the ``while_loop`` carry; Gemma's ``SamplingState``).

    step:         [] int32       columns of ``tokens_bn`` written so far (1 after prefill).
    done_b:       [B] bool       row emitted an EOS (or is a batch-padding row); it emits padding now.
    tokens_bn:    [B, N] int32   generated tokens, ``pad_id`` after a row is done and beyond ``step``.
    logprobs_bn:  [B, N] f32     log p(token) under the model (masked vocabulary, before temperature /
                                 top-k / top-p); 0 where ``tokens_bn`` is padding.
    cache:        KVCache        keys/values [L, B, S, K, H] of the prompt and every fed token.
    rng:          PRNG key       split once per generated token.
    logits_bnv:   [B, N, V] f32  the masked logits each token was chosen from (only when asked: tests).
    """

    step: Array
    done_b: Array
    tokens_bn: Array
    logprobs_bn: Array
    cache: KVCache
    rng: Array
    logits_bnv: Array | None = None


def _constrain_cache(cache: KVCache) -> KVCache:
    """Batch over the data axes, KV heads over ``tensor`` (a no-op without an active mesh)."""
    kv_axes = ("layers", "batch", "cache_length", "act_kv_heads", None)
    return KVCache(
        k=constrain(cache.k, kv_axes),
        v=constrain(cache.v, kv_axes),
        segment_ids=constrain(cache.segment_ids, ("batch", "cache_length")),
        index=cache.index,
    )


def _choose(model: Decoder, logits_bv: Array, key: Array, sampling: SamplingParams) -> tuple[Array, Array, Array]:
    """(token [B], its log-prob [B], masked logits [B, V]) from raw last-position logits."""
    logits_bv = mask_padded_logits(logits_bv.astype(jnp.float32), model.config.valid_vocab_size)
    token_b = sample_logits(logits_bv, key, sampling)
    logprobs_bv = jax.nn.log_softmax(logits_bv, axis=-1)
    logprob_b = jnp.take_along_axis(logprobs_bv, token_b[:, None], axis=-1)[:, 0]
    return token_b, logprob_b, logits_bv


def _prefill(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompt_bt: Array,
    prompt_mask_bt: Array,
    active_b: Array,
    force_b: Array,
    eos_e: Array,
    rng: Array,
    *,
    max_new_tokens: int,
    sampling: SamplingParams,
    pad_id: int,
    keep_logits: bool = False,
) -> DecodeState:
    _TRACES["prefill"] += 1  # runs at trace time only
    model = nnx.merge(graphdef, params)
    b, t = prompt_bt.shape
    # Slots: t prompt tokens, then one per fed token (the last generated token is never fed).
    cache = _constrain_cache(KVCache.init(model.config, b, t + max_new_tokens))
    hidden_btd, cache = model(prompt_bt, attention_mask=prompt_mask_bt, cache=cache, return_hidden=True)
    # Left padding: every row's last prompt token is in column t - 1; only its logits are needed.
    logits_bv = model.logits(hidden_btd[:, -1:])[:, 0]
    rng, key = jax.random.split(rng)
    token_b, logprob_b, logits_bv = _choose(model, logits_bv, key, sampling)
    forced_b = force_b >= 0
    token_b = jnp.where(forced_b, force_b, token_b)
    logprob_b = jnp.where(forced_b, jax.nn.log_softmax(logits_bv)[jnp.arange(b), jnp.maximum(force_b, 0)],
                          logprob_b)
    token_b = jnp.where(active_b, token_b, pad_id)
    logprob_b = jnp.where(active_b, logprob_b, 0.0)
    tokens_bn = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token_b)
    logprobs_bn = jnp.zeros((b, max_new_tokens), jnp.float32).at[:, 0].set(logprob_b)
    logits_bnv = None
    if keep_logits:
        logits_bnv = jnp.zeros((b, max_new_tokens, logits_bv.shape[-1]), jnp.float32).at[:, 0].set(logits_bv)
    return DecodeState(
        step=jnp.ones((), jnp.int32),
        done_b=~active_b | jnp.isin(token_b, eos_e),
        tokens_bn=tokens_bn,
        logprobs_bn=logprobs_bn,
        cache=_constrain_cache(cache),
        rng=rng,
        logits_bnv=logits_bnv,
    )


def _decode_loop(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    state: DecodeState,
    eos_e: Array,
    *,
    sampling: SamplingParams,
    pad_id: int,
) -> DecodeState:
    _TRACES["decode_loop"] += 1
    model = nnx.merge(graphdef, params)
    max_new_tokens = state.tokens_bn.shape[1]

    def cond(s: DecodeState) -> Array:
        return (s.step < max_new_tokens) & ~jnp.all(s.done_b)

    def body(s: DecodeState) -> DecodeState:
        last_b1 = jax.lax.dynamic_slice_in_dim(s.tokens_bn, s.step - 1, 1, axis=1)
        logits_b1v, cache = model(last_b1, cache=s.cache)
        rng, key = jax.random.split(s.rng)
        token_b, logprob_b, logits_bv = _choose(model, logits_b1v[:, 0], key, sampling)
        token_b = jnp.where(s.done_b, pad_id, token_b)
        logprob_b = jnp.where(s.done_b, 0.0, logprob_b)
        logits_bnv = s.logits_bnv
        if logits_bnv is not None:
            logits_bnv = jax.lax.dynamic_update_slice_in_dim(logits_bnv, logits_bv[:, None], s.step, axis=1)
        return DecodeState(
            step=s.step + 1,
            done_b=s.done_b | jnp.isin(token_b, eos_e),
            tokens_bn=jax.lax.dynamic_update_slice_in_dim(s.tokens_bn, token_b[:, None], s.step, axis=1),
            logprobs_bn=jax.lax.dynamic_update_slice_in_dim(s.logprobs_bn, logprob_b[:, None], s.step, axis=1),
            cache=_constrain_cache(cache),
            rng=rng,
            logits_bnv=logits_bnv,
        )

    return jax.lax.while_loop(cond, body, state)


prefill = jax.jit(_prefill, static_argnames=("graphdef", "max_new_tokens", "sampling", "pad_id", "keep_logits"))
prefill.__doc__ = """Runs left-padded prompts through the model and samples the first token (jitted).

Args:
  graphdef, params:  ``nnx.split(model)``; ``graphdef`` is static, ``params`` traced.
  prompt_bt:         [B, T] int32 left-padded prompt ids (every row's last column is a real token).
  prompt_mask_bt:    [B, T] 1 for real tokens, 0 for padding.
  active_b:          [B] bool; False marks batch-padding rows (they start done).
  force_b:           [B] int32 first token to force, or -1 to let the model choose.
  eos_e:             [E] int32 EOS ids (E may be 0).
  rng:               PRNG key.
  max_new_tokens, sampling, pad_id, keep_logits: static.
Returns the :class:`DecodeState` after one generated token, with a cache of T + max_new_tokens slots.
"""

decode_loop = jax.jit(_decode_loop, static_argnames=("graphdef", "sampling", "pad_id"), donate_argnames=("state",))
decode_loop.__doc__ = """Generates until every row is done or ``tokens_bn`` is full (jitted; ``state`` donated).

Args: ``graphdef, params`` as for :func:`prefill`; ``state`` from :func:`prefill`; ``eos_e`` [E] int32;
static ``sampling`` and ``pad_id``. Returns the final :class:`DecodeState`.
"""


# ----------------------------------------------------------------------------- host side
def bucket_size(n: int, buckets: Sequence[int] | None = None, *, minimum: int = 1, multiple: int = 1,
                half_steps: bool = False) -> int:
    """The bucket a size ``n`` is padded up to.

    With ``buckets`` (ascending), the smallest one >= n; beyond the largest, the next multiple of the
    largest. Without, the next power of two >= max(n, minimum), or with ``half_steps`` the next of
    2^k and 1.5 * 2^k (at most a third of padding: 537 -> 768, not 1024). The result is rounded up
    to ``multiple``.
    """
    if n < 1:
        raise ValueError(f"bucket_size: n must be >= 1, got {n}")
    if buckets:
        ordered = sorted(int(b) for b in buckets)
        size = next((b for b in ordered if b >= n), None)
        if size is None:
            size = -(-n // ordered[-1]) * ordered[-1]
    else:
        n = max(n, minimum)
        size = 1 << (n - 1).bit_length()
        if half_steps and size >= 4 and size * 3 // 4 >= n:
            size = size * 3 // 4
    return -(-size // multiple) * multiple


def data_parallel_size(mesh: Mesh | None) -> int:
    """How many ways the ``batch`` logical axis is split on ``mesh`` (batch sizes must be multiples)."""
    if mesh is None:
        return 1
    spec = logical_to_spec(("batch",), mesh=mesh)[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
    return math.prod(mesh.shape[a] for a in axes)


def split_and_place(model: Decoder, mesh: Mesh | None = None) -> tuple[nnx.GraphDef, nnx.State]:
    """``nnx.split(model)``, with the weights placed by the rules table on ``mesh`` when given."""
    graphdef, params = nnx.split(model)
    if mesh is not None:
        params = jax.device_put(params, state_shardings(params, mesh))
    return graphdef, params


def batch_arrays(arrays: Sequence[np.ndarray], mesh: Mesh | None) -> tuple[Any, ...]:
    """Host arrays with a leading batch axis, sharded over the data axes of ``mesh`` (as-is without one)."""
    if mesh is None:
        return tuple(arrays)
    return tuple(jax.device_put(a, NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (a.ndim - 1),
                                                                        mesh=mesh))) for a in arrays)


def mesh_context(mesh: Mesh | None) -> Any:
    """``jax.set_mesh(mesh)``, or a no-op context without a mesh."""
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()


@dataclasses.dataclass
class SamplerOutput:
    """Result of one :class:`Sampler` call; lists are in prompt order.

    tokens:       new ids per prompt, up to and including the first EOS (none if the budget ran out).
    logprobs:     log p of each of those tokens under the model (masked vocabulary, no temperature).
    logits:       with ``keep_logits=True``, the [n_i, V] logits each token was chosen from.
    num_generated: total tokens in ``tokens``.
    seconds:      wall time of the calls, compilation excluded (host padding and transfers included).
    compile_seconds: time spent compiling new buckets during the call.
    num_prompt_tokens: total prompt tokens prefilled (padding excluded).
    """

    tokens: list[list[int]]
    logprobs: list[list[float]]
    logits: list[np.ndarray] | None
    num_generated: int
    seconds: float
    compile_seconds: float = 0.0
    num_prompt_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.num_generated / self.seconds if self.seconds > 0 else float("nan")


class Sampler:
    """Batched generation for one model (optionally sharded over a mesh).

    model:          a :class:`Decoder`; it is split once (``nnx.split``) and its weights are placed on
                    ``mesh`` with the rules table (heads over ``tensor``) when a mesh is given.
    mesh:           optional; the batch is sharded over the mesh axes of the ``batch`` rule (data, fsdp).
    pad_id:         id written after a row is done and used for left padding (default: the config's
                    ``pad_token_id``, else 0). It is never fed as a real token.
    prompt_buckets: ascending prompt lengths to pad to (default: 16, 24, 32, 48, 64, 96, ...: powers of
                    two and 1.5x powers of two).
    batch_buckets:  ascending batch sizes to pad to (default: powers of two), rounded up to the
                    data-parallel size of the mesh.
    max_batch_size: prompts per device call; longer lists are processed in chunks.
    sort_by_length: form the chunks from length-sorted prompts (less padding); outputs keep input order.
    """

    def __init__(
        self,
        model: Decoder,
        *,
        mesh: Mesh | None = None,
        pad_id: int | None = None,
        prompt_buckets: Sequence[int] | None = None,
        batch_buckets: Sequence[int] | None = None,
        max_batch_size: int = 64,
        sort_by_length: bool = True,
    ):
        self.config = model.config
        self.graphdef, self.params = split_and_place(model, mesh)
        self.mesh = mesh
        self.pad_id = int(pad_id if pad_id is not None else (self.config.pad_token_id or 0))
        self.prompt_buckets = tuple(prompt_buckets) if prompt_buckets else None
        self.batch_buckets = tuple(batch_buckets) if batch_buckets else None
        self.max_batch_size = int(max_batch_size)
        self.sort_by_length = bool(sort_by_length)
        self.data_parallel = data_parallel_size(mesh)

    def __call__(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        eos_ids: Sequence[int] = (),
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        force_first_token: int | Sequence[int | None] | None = None,
        keep_logits: bool = False,
    ) -> SamplerOutput:
        """Generates for every prompt; see :func:`generate` for the arguments."""
        prompts = [list(map(int, p)) for p in prompt_ids]
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"generate: prompt {i} is empty; every prompt needs at least one token")
        if max_new_tokens < 1:
            raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
        if force_first_token is None or isinstance(force_first_token, int | np.integer):
            forced = [force_first_token] * len(prompts)
        else:
            forced = list(force_first_token)
            if len(forced) != len(prompts):
                raise ValueError(f"generate: force_first_token has {len(forced)} entries for {len(prompts)} prompts")
        sampling = SamplingParams(float(temperature), top_k, top_p)
        eos_e = np.asarray(sorted({int(e) for e in eos_ids}), np.int32)
        rng = jax.random.key(seed)
        out = SamplerOutput(tokens=[], logprobs=[], logits=[] if keep_logits else None, num_generated=0, seconds=0.0)
        # Chunks of similar length pad less (prompts longer than a chunk's bucket are rare); the
        # results are put back in input order below.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if self.sort_by_length else None
        if order is not None:
            prompts, forced = [prompts[i] for i in order], [forced[i] for i in order]
        start = time.perf_counter()
        for chunk_index, lo in enumerate(range(0, len(prompts), self.max_batch_size)):
            chunk = slice(lo, lo + self.max_batch_size)
            chunk_rng = jax.random.fold_in(rng, chunk_index)
            self._run_chunk(prompts[chunk], forced[chunk], eos_e, chunk_rng, max_new_tokens, sampling,
                            keep_logits, out)
        out.seconds = time.perf_counter() - start - out.compile_seconds
        if order is not None:
            inverse = np.argsort(order)
            out.tokens = [out.tokens[i] for i in inverse]
            out.logprobs = [out.logprobs[i] for i in inverse]
            if keep_logits:
                out.logits = [out.logits[i] for i in inverse]
        out.num_generated = sum(len(t) for t in out.tokens)
        out.num_prompt_tokens = sum(len(p) for p in prompts)
        return out

    @staticmethod
    def _compiled(name: str, key: tuple, out: SamplerOutput, lower: Any) -> Any:
        """The executable of ``name`` for ``key``, compiled ahead of time once (timed into ``out``)."""
        exe = _EXECUTABLES.get((name, key))
        if exe is None:
            start = time.perf_counter()
            exe = _EXECUTABLES[(name, key)] = lower().compile()
            out.compile_seconds += time.perf_counter() - start
        return exe

    def _run_chunk(self, prompts, forced, eos_e, rng, max_new_tokens, sampling, keep_logits, out) -> None:
        n = len(prompts)
        b = bucket_size(n, self.batch_buckets, multiple=self.data_parallel)
        t = bucket_size(max(len(p) for p in prompts), self.prompt_buckets, minimum=DEFAULT_MIN_PROMPT_BUCKET,
                        half_steps=True)
        prompt_bt = np.full((b, t), self.pad_id, np.int32)
        mask_bt = np.zeros((b, t), np.int32)
        for i, p in enumerate(prompts):
            prompt_bt[i, t - len(p):] = p
            mask_bt[i, t - len(p):] = 1
        mask_bt[n:, -1] = 1  # batch-padding rows hold one (pad) token so no row is empty
        active_b = np.arange(b) < n
        force_b = np.full((b,), -1, np.int32)
        for i, f in enumerate(forced):
            if f is not None:
                force_b[i] = int(f)
        arrays = batch_arrays((prompt_bt, mask_bt, active_b, force_b), self.mesh)
        key = (self.graphdef, self.mesh, b, t, len(eos_e), max_new_tokens, sampling, self.pad_id, keep_logits)
        with mesh_context(self.mesh):
            prefill_args = (self.params, *arrays, eos_e, rng)
            run_prefill = self._compiled("prefill", key, out, lambda: prefill.lower(
                self.graphdef, *prefill_args, max_new_tokens=max_new_tokens, sampling=sampling, pad_id=self.pad_id,
                keep_logits=keep_logits))
            state = run_prefill(*prefill_args)
            run_decode = self._compiled("decode_loop", key, out, lambda: decode_loop.lower(
                self.graphdef, self.params, state, eos_e, sampling=sampling, pad_id=self.pad_id))
            state = run_decode(self.params, state, eos_e)
            tokens_bn, logprobs_bn, steps = jax.device_get((state.tokens_bn, state.logprobs_bn, state.step))
            logits_bnv = jax.device_get(state.logits_bnv) if keep_logits else None
        eos = set(eos_e.tolist())
        for i in range(n):
            row = tokens_bn[i, : int(steps)].tolist()
            length = next((j + 1 for j, tok in enumerate(row) if tok in eos), len(row))
            out.tokens.append(row[:length])
            out.logprobs.append(logprobs_bn[i, :length].tolist())
            if keep_logits:
                out.logits.append(np.asarray(logits_bnv[i, :length]))


def generate(
    model: Decoder,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    force_first_token: int | Sequence[int | None] | None = None,
    mesh: Mesh | None = None,
    pad_id: int | None = None,
    prompt_buckets: Sequence[int] | None = None,
    max_batch_size: int = 64,
) -> list[list[int]]:
    """Generates a continuation for each prompt; returns the new ids (up to and including an EOS).

    prompt_ids:         ragged list of token-id lists (each non-empty).
    max_new_tokens:     token budget per prompt.
    eos_ids:            a row stops after emitting any of these (e.g. ``config.stop_token_ids``).
    temperature:        0 = greedy; otherwise sample from softmax(logits / temperature).
    top_k, top_p:       restrict sampling to the k most likely tokens / the top-p probability mass.
    seed:               PRNG seed; the same seed and inputs give the same tokens.
    force_first_token:  one id for every prompt, or one per prompt (None = model's choice): the first
                        generated token is forced, e.g. a behavior token to steer the reply.
    mesh, pad_id, prompt_buckets, max_batch_size: see :class:`Sampler`. For repeated calls build a
    :class:`Sampler` once (it splits and places the weights once).
    """
    sampler = Sampler(model, mesh=mesh, pad_id=pad_id, prompt_buckets=prompt_buckets, max_batch_size=max_batch_size)
    return sampler(prompt_ids, max_new_tokens=max_new_tokens, eos_ids=eos_ids, temperature=temperature, top_k=top_k,
                   top_p=top_p, seed=seed, force_first_token=force_first_token).tokens
