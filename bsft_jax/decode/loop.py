"""The jitted decode phases: :func:`prefill`, then :func:`decode_loop` (a ``lax.while_loop`` over :class:`DecodeState`).

Both take the model as ``(graphdef, params)`` (``nnx.split``): the graph definition is a static
argument and the weights a traced one, so weights are never baked into the program and a second
model of the same shape reuses the compiled code. The decode state (cache included) is donated to
the loop. Left padding makes every row's last prompt token sit in the same column, so all rows
write the same cache slot each step (the decoder's cache contract). Rows that emit an EOS are marked
done; from then on they emit ``pad_id``, and since attention never crosses rows they cannot change
any other row's tokens.

How often the :class:`~bsft_jax.decode.sampler.Sampler` compiled these phases is its own state
(:meth:`~bsft_jax.decode.sampler.Sampler.compile_counts`); this module keeps none.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from bsft_jax.decode.layered import LayerCache, LayeredDecoder
from bsft_jax.decode.sampling import SamplingParams, sample_logits
from bsft_jax.models.logits import mask_padded_logits
from bsft_jax.models.sharding import constrain

Array = jax.Array
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    """Everything the decode loop carries (the ``while_loop`` carry; Gemma's ``SamplingState``).

    step:         [] int32       columns of ``tokens_bn`` written so far (1 after prefill).
    done_b:       [B] bool       row emitted an EOS (or is a batch-padding row); it emits padding now.
    tokens_bn:    [B, N] int32   generated tokens, ``pad_id`` after a row is done and beyond ``step``.
    logprobs_bn:  [B, N] f32     log p(token) under the model (masked vocabulary, before temperature /
                                 top-k / top-p); 0 where ``tokens_bn`` is padding.
    cache:        LayerCache     per-layer keys/values [B, K, S, H] of the prompt and every fed token.
    rng:          PRNG key       split once per generated token.
    logits_bnv:   [B, N, V] f32  the masked logits each token was chosen from (only when asked: tests).
    """

    step: Array
    done_b: Array
    tokens_bn: Array
    logprobs_bn: Array
    cache: LayerCache
    rng: Array
    logits_bnv: Array | None = None


def constrain_cache(cache: LayerCache) -> LayerCache:
    """Batch over the data axes, KV heads over ``tensor`` (a no-op without an active mesh)."""
    kv_axes = ("batch", "act_kv_heads", "cache_length", None)
    return LayerCache(
        k=tuple(constrain(k, kv_axes) for k in cache.k),
        v=tuple(constrain(v, kv_axes) for v in cache.v),
        segment_ids=constrain(cache.segment_ids, ("batch", "cache_length")),
        index=cache.index,
    )


def choose(model: LayeredDecoder, logits_bv: Array, key: Array, sampling: SamplingParams) -> tuple[Array, Array, Array]:
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
    model = nnx.merge(graphdef, params)
    b, t = prompt_bt.shape
    # Slots: t prompt tokens, then one per fed token (the last generated token is never fed).
    cache = constrain_cache(LayerCache.init(model.config, b, t + max_new_tokens))
    hidden_btd, cache = model(prompt_bt, attention_mask=prompt_mask_bt, cache=cache, return_hidden=True)
    # Left padding: every row's last prompt token is in column t - 1; only its logits are needed.
    logits_bv = model.logits(hidden_btd[:, -1:])[:, 0]
    rng, key = jax.random.split(rng)
    token_b, logprob_b, logits_bv = choose(model, logits_bv, key, sampling)
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
        cache=constrain_cache(cache),
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
    model = nnx.merge(graphdef, params)
    max_new_tokens = state.tokens_bn.shape[1]

    def cond(s: DecodeState) -> Array:
        return (s.step < max_new_tokens) & ~jnp.all(s.done_b)

    def body(s: DecodeState) -> DecodeState:
        last_b1 = jax.lax.dynamic_slice_in_dim(s.tokens_bn, s.step - 1, 1, axis=1)
        logits_b1v, cache = model(last_b1, cache=s.cache)
        rng, key = jax.random.split(s.rng)
        token_b, logprob_b, logits_bv = choose(model, logits_b1v[:, 0], key, sampling)
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
            cache=constrain_cache(cache),
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
