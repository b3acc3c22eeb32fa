"""The decode-time model: one weight buffer and one KV buffer per layer, heads-major cache layout.

:class:`~bsft_jax.models.decoder.Decoder` stores its blocks stacked ([L, ...] on every weight) and
scans over them: right for training (compile time flat in depth), wrong for a decode step, which is
memory-bound and tiny. A CPU profile of the stacked decode step showed 23% of the time in
dynamic-slice copies of each layer's weights out of the stacked arrays and 20% in transposes of the
[B, S, K, H] cache into the attention einsum's [B, K, S, H] order.

So the sampler decodes with :class:`LayeredDecoder`: the same weights, split once into one buffer
per layer (:func:`unstack_layers`), the layers unrolled in the program (a Python loop: each layer
reads its own arguments directly), and a :class:`LayerCache` of one ``[B, K, S, H]`` key and value
buffer per layer, written in place and read by batched matmuls over (B, K) with no transpose.
The blocks are the training model's own :class:`~bsft_jax.models.decoder.Block` modules, so the
norms, projections, RoPE and MLP are the same code; only the cached attention is specific here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import (
    _MASK_VALUE,
    Block,
    Decoder,
    RMSNorm,
    _param,
    apply_rope,
    project,
    rope_cos_sin,
    rope_inverse_frequencies,
)
from bsft_jax.models.sharding import constrain

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerCache:
    """Key/value cache with its own buffer per layer.

    k, v:         L-tuples of [B, K, S, H]  keys (already rotated) and values (heads-major).
    segment_ids:  [B, S] int32  1 where a slot holds a real token, 0 for empty or padding slots.
    index:        [] int32      next slot to write; all rows write the same slot (left padding).
    """

    k: tuple[Array, ...]
    v: tuple[Array, ...]
    segment_ids: Array
    index: Array

    @classmethod
    def init(cls, config: DecoderConfig, batch: int, max_length: int, dtype: Any = None) -> LayerCache:
        """An empty cache for ``batch`` rows and ``max_length`` slots."""
        dtype = dtype or config.dtype
        shape = (batch, config.num_kv_heads, max_length, config.head_dim)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
            segment_ids=jnp.zeros((batch, max_length), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_length(self) -> int:
        return self.segment_ids.shape[1]


def cached_attention(q_btnh: Array, k_bksh: Array, v_bksh: Array, mask_bts: Array) -> Array:
    """softmax(q k^T / sqrt(H)) v over a heads-major cache; fp32 scores and softmax.

    Query head n = k * G + g reads key/value head k (the training einsum's grouping). The matmuls
    batch over (B, K) with the cache in its stored layout; only the T new query rows are reordered.
    """
    b, t, n, h = q_btnh.shape
    k_heads = k_bksh.shape[1]
    g = n // k_heads
    q_bkqh = q_btnh.reshape(b, t, k_heads, g, h).transpose(0, 2, 3, 1, 4).reshape(b, k_heads, g * t, h)
    scores = jnp.einsum("bkqh,bksh->bkqs", q_bkqh, k_bksh, preferred_element_type=jnp.float32) / math.sqrt(h)
    scores = scores.reshape(b, k_heads, g, t, -1)
    scores = jnp.where(mask_bts[:, None, None, :, :], scores, _MASK_VALUE).reshape(b, k_heads, g * t, -1)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bksh.dtype)
    out_bkqh = jnp.einsum("bkqs,bksh->bkqh", probs, v_bksh)
    return out_bkqh.reshape(b, k_heads, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _block_step(block: Block, x_btd: Array, cos_bth: Array, sin_bth: Array, mask_bts: Array, k_bksh: Array,
                v_bksh: Array, index: Array) -> tuple[Array, Array, Array]:
    """One block on T new tokens: writes their keys/values at ``index``; returns (x, k cache, v cache)."""
    attn, dtype = block.attn, x_btd.dtype
    h_btd = block.input_norm(x_btd)
    q_btnh = apply_rope(attn._project(h_btd, "q"), cos_bth, sin_bth)
    k_btkh = apply_rope(attn._project(h_btd, "k"), cos_bth, sin_bth)
    v_btkh = attn._project(h_btd, "v")
    zero = jnp.zeros((), jnp.int32)
    start = (zero, zero, index, zero)
    k_bksh = jax.lax.dynamic_update_slice(k_bksh, k_btkh.transpose(0, 2, 1, 3).astype(k_bksh.dtype), start)
    v_bksh = jax.lax.dynamic_update_slice(v_bksh, v_btkh.transpose(0, 2, 1, 3).astype(v_bksh.dtype), start)
    out_btnh = cached_attention(q_btnh, k_bksh.astype(dtype), v_bksh.astype(dtype), mask_bts)
    y_btd = project(out_btnh, attn.o_proj.value.astype(dtype), 2)
    if attn.config.o_bias:
        y_btd = y_btd + attn.o_bias.value.astype(dtype)
    x_btd = x_btd + y_btd
    x_btd = x_btd + block.mlp(block.post_attn_norm(x_btd))
    return x_btd, k_bksh, v_bksh


class LayeredDecoder(nnx.Module):
    """A :class:`Decoder` for KV-cache decoding: per-layer blocks (``nnx.List``), per-layer cache.

    Build it from a trained model with :func:`unstack_layers`. ``model(ids, attention_mask, cache=c)``
    returns ``(logits [B, T, V], new cache)``; ``return_hidden=True`` returns the final normed hidden
    states instead of logits, and :meth:`logits` applies the head (as ``Decoder``).
    """

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs | None = None):
        self.config = config
        pd = config.param_dtype
        init = jax.nn.initializers.normal(0.02)
        self.embed = _param(rngs, init, (config.vocab_size, config.hidden_size), ("vocab", "embed"), pd, None)
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=pd, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = _param(rngs, init, (config.hidden_size, config.vocab_size), ("embed", "vocab"), pd, None)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, *, cache: LayerCache,
                 return_hidden: bool = False) -> tuple[Array, LayerCache]:
        """(logits or hidden states, updated cache) for T new left-padded tokens per row."""
        c = self.config
        dtype = jnp.dtype(c.dtype)
        b, t = input_ids.shape
        valid_bt = jnp.ones((b, t), jnp.int32) if attention_mask is None else (attention_mask != 0).astype(jnp.int32)
        before = jnp.sum(cache.segment_ids != 0, axis=1, keepdims=True)
        positions = before + jnp.cumsum(valid_bt, axis=1) - valid_bt
        k_seg = jax.lax.dynamic_update_slice(cache.segment_ids, valid_bt, (0, cache.index))
        q_slot, k_slot = cache.index + jnp.arange(t), jnp.arange(cache.max_length)
        mask_bts = (k_seg[:, None, :] != 0) & (k_slot[None, None, :] <= q_slot[None, :, None])
        cos_bth, sin_bth = rope_cos_sin(positions, rope_inverse_frequencies(c), dtype)
        table_vd = constrain(self.embed.value, ("vocab", None))
        x_btd = constrain(jnp.take(table_vd, input_ids, axis=0).astype(dtype), ("batch", "length", "act_embed"))
        new_k, new_v = [], []
        for block, k_bksh, v_bksh in zip(self.blocks, cache.k, cache.v, strict=True):
            x_btd, k_bksh, v_bksh = _block_step(block, x_btd, cos_bth, sin_bth, mask_bts, k_bksh, v_bksh,
                                                cache.index)
            new_k.append(k_bksh)
            new_v.append(v_bksh)
        x_btd = self.final_norm(x_btd)
        out = x_btd if return_hidden else self.logits(x_btd)
        return out, LayerCache(k=tuple(new_k), v=tuple(new_v), segment_ids=k_seg, index=cache.index + t)

    def logits(self, x_btd: Array) -> Array:
        """LM head: the training decoder's own (same attribute names: ``embed``, ``lm_head``, ``config``)."""
        return Decoder.logits(self, x_btd)  # type: ignore[arg-type]


def unstack_layers(model: Decoder) -> LayeredDecoder:
    """The same weights as ``model``, one buffer per layer (a copy of the block weights, made once)."""
    if isinstance(model, LayeredDecoder):
        return model
    abstract = nnx.eval_shape(lambda: LayeredDecoder(model.config, rngs=nnx.Rngs(params=0)))
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(nnx.state(model))
    stacked = pure.pop("layers")
    pure["blocks"] = {i: jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(model.config.num_layers)}
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)
