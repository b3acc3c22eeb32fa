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
The blocks are the training model's own :class:`~bsft_jax.models.decoder.Block` modules and every
step but the cached attention itself calls the decoder's code: the embedding (Gemma's scale),
q/k/v with q/k norms and RoPE (:meth:`Attention.qkv`), the output projection, the residuals with
post norms and the MLP (:meth:`Block.after_attention`), sliding-window layers' RoPE base and mask
(:func:`per_layer_inputs`), the final norm and the head. Only the heads-major attention is here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import MASK_VALUE, Block, Decoder, RMSNorm, param, per_layer_inputs
from bsft_jax.models.lora import merge_factors

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


def cached_attention(q_btnh: Array, k_bksh: Array, v_bksh: Array, mask_bts: Array,
                     scale: float | None = None) -> Array:
    """softmax(q k^T * scale) v over a heads-major cache; fp32 scores and softmax.

    ``scale`` defaults to 1/sqrt(H) (the config's ``attention_scale``: Gemma 3 sets it otherwise).

    Query head n = k * G + g reads key/value head k (the training einsum's grouping). The matmuls
    batch over (B, K) with the cache in its stored layout; only the T new query rows are reordered.
    """
    b, t, n, h = q_btnh.shape
    k_heads = k_bksh.shape[1]
    g = n // k_heads
    q_bkqh = q_btnh.reshape(b, t, k_heads, g, h).transpose(0, 2, 3, 1, 4).reshape(b, k_heads, g * t, h)
    if scale is None:
        scale = 1.0 / math.sqrt(h)
    scores = jnp.einsum("bkqh,bksh->bkqs", q_bkqh, k_bksh, preferred_element_type=jnp.float32) * scale
    scores = scores.reshape(b, k_heads, g, t, -1)
    scores = jnp.where(mask_bts[:, None, None, :, :], scores, MASK_VALUE).reshape(b, k_heads, g * t, -1)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bksh.dtype)
    out_bkqh = jnp.einsum("bkqs,bksh->bkqh", probs, v_bksh)
    return out_bkqh.reshape(b, k_heads, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _block_step(block: Block, x_btd: Array, cos_bth: Array, sin_bth: Array, mask_bts: Array, k_bksh: Array,
                v_bksh: Array, index: Array) -> tuple[Array, Array, Array]:
    """One block on T new tokens: writes their keys/values at ``index``; returns (x, k cache, v cache)."""
    attn, dtype = block.attn, x_btd.dtype
    q_btnh, k_btkh, v_btkh = attn.qkv(block.input_norm(x_btd), cos_bth, sin_bth)
    zero = jnp.zeros((), jnp.int32)
    start = (zero, zero, index, zero)
    k_bksh = jax.lax.dynamic_update_slice(k_bksh, k_btkh.transpose(0, 2, 1, 3).astype(k_bksh.dtype), start)
    v_bksh = jax.lax.dynamic_update_slice(v_bksh, v_btkh.transpose(0, 2, 1, 3).astype(v_bksh.dtype), start)
    out_btnh = cached_attention(q_btnh, k_bksh.astype(dtype), v_bksh.astype(dtype), mask_bts,
                                attn.config.attention_scale)
    return block.after_attention(x_btd, attn.output(out_btnh, dtype)), k_bksh, v_bksh


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
        self.embed = param(rngs, init, (config.vocab_size, config.hidden_size), ("vocab", "embed"), pd, None)
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=pd, rngs=rngs,
                                  plus_one=config.norm_plus_one)
        if not config.tie_word_embeddings:
            self.lm_head = param(rngs, init, (config.hidden_size, config.vocab_size), ("embed", "vocab"), pd, None)

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
        inputs_of, _ = per_layer_inputs(c, positions, mask_bts, q_slot, k_slot, dtype)
        x_btd = self.embed_tokens(input_ids)
        new_k, new_v = [], []
        layers = zip(self.blocks, cache.k, cache.v, c.sliding_layer_mask, strict=True)
        for block, k_bksh, v_bksh, is_local in layers:
            cos_bth, sin_bth, mask_l, _ = inputs_of(is_local)  # a Python bool: one layer kind's tables
            x_btd, k_bksh, v_bksh = _block_step(block, x_btd, cos_bth, sin_bth, mask_l, k_bksh, v_bksh, cache.index)
            new_k.append(k_bksh)
            new_v.append(v_bksh)
        x_btd = self.final_norm(x_btd)
        out = x_btd if return_hidden else self.logits(x_btd)
        return out, LayerCache(k=tuple(new_k), v=tuple(new_v), segment_ids=k_seg, index=cache.index + t)

    def embed_tokens(self, input_ids: Array) -> Array:
        """Token embeddings: the training decoder's own (Gemma's sqrt(D) scale included)."""
        return Decoder.embed_tokens(self, input_ids)  # type: ignore[arg-type]

    def head_weight(self, dtype: Any) -> Array:
        """The LM head [D, V]: the training decoder's own."""
        return Decoder.head_weight(self, dtype)  # type: ignore[arg-type]

    def logits(self, x_btd: Array) -> Array:
        """LM head: the training decoder's own (same attribute names: ``embed``, ``lm_head``, ``config``)."""
        return Decoder.logits(self, x_btd)  # type: ignore[arg-type]


def unstack_layers(model: Decoder) -> LayeredDecoder:
    """The same weights as ``model``, one buffer per layer (a copy of the block weights, made once).

    A LoRA model (``config.lora``) is merged on the way: each targeted projection becomes
    ``W + scale * A B`` (fp32 sum, cast back to W's dtype), so decoding runs the plain decoder's
    program with no adapter matmuls.
    """
    if isinstance(model, LayeredDecoder):
        return model
    config = model.config.replace(lora=None)
    abstract = nnx.eval_shape(lambda: LayeredDecoder(config, rngs=nnx.Rngs(params=0)))
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(nnx.state(model))
    stacked = pure.pop("layers")
    if model.config.lora is not None:
        _merge_lora(stacked, model.config.lora)
    pure["blocks"] = {i: jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(model.config.num_layers)}
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def _merge_lora(stacked: dict[str, Any], lora: Any) -> None:
    """Folds the stacked adapters of ``stacked`` (the Decoder's ``layers`` pure dict) into their
    projections on device (:func:`~bsft_jax.models.lora.merge_factors`), in place, and drops the factors."""
    for owner in ("attn", "mlp"):
        block = stacked[owner]
        for name in [k[: -len("_lora_a")] for k in block if k.endswith("_lora_a")]:
            a, b = block.pop(f"{name}_lora_a"), block.pop(f"{name}_lora_b")
            block[f"{name}_proj"] = merge_factors(block[f"{name}_proj"], a, b, lora.scale)
