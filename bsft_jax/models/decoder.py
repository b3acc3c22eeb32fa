"""Flax NNX decoder for Qwen2/Qwen2.5, Llama 3.x, Qwen3 and Gemma 3, numerically matching transformers.

HF-exact choices: half-split ("rotate_half") RoPE with fp32 frequencies, unscaled q/k projections
(so HF import/export is transpose + reshape only), RMSNorm and softmax in fp32, HF epsilons,
optional tied head, Llama 3 / linear RoPE scaling. Gemma 3 and Qwen3 are configuration, not code:
(1 + w) norms, sandwich norms, q/k norms, GeGLU, a scaled embedding and sliding-window layers.

Layers are stored stacked (leading ``layers`` axis on every block parameter) and run with
``jax.lax.scan``, so compile time does not grow with depth. Weights are named in einsum form:
``q_proj: [D, N, H]``, activations ``x_btd`` (axis letters in :mod:`bsft_jax.models.config`).

The pieces: :mod:`bsft_jax.models.layers` (parameters, RoPE, ``project``, RMSNorm, the MLP) and
:mod:`bsft_jax.models.attention` (the attention module and kernels); this module assembles them
(Block, Decoder, KVCache) and re-exports their names, which callers import from here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bsft_jax.models import lora as lora_lib
from bsft_jax.models.attention import (  # noqa: F401 (re-exported: decoder is where callers import them)
    MASK_VALUE,
    Attention,
    dot_product_attention,
    fused_attention,
    resolve_attention_impl,
)
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.layers import (  # noqa: F401 (re-exported)
    MLP,
    PatchedColumns,
    RMSNorm,
    _normal,
    apply_rope,
    param,
    project,
    rope_cos_sin,
    rope_inverse_frequencies,
)
from bsft_jax.models.rows import TrainableRows
from bsft_jax.models.sharding import constrain

Array = jax.Array


# ----------------------------------------------------------------------------- KV cache
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Key/value cache for all layers, stacked on a leading layer axis.

    k, v:         [L, B, S, K, H]  keys (already rotated) and values, per layer.
    segment_ids:  [B, S] int32     1 where a slot holds a real token, 0 for empty or padding slots.
    index:        [] int32         next slot to write; all rows write the same slot (left padding).
    """

    k: Array
    v: Array
    segment_ids: Array
    index: Array

    @classmethod
    def init(cls, config: DecoderConfig, batch: int, max_length: int, dtype: Any = None) -> KVCache:
        """An empty cache for ``batch`` rows and ``max_length`` slots."""
        dtype = dtype or config.dtype
        shape = (config.num_layers, batch, max_length, config.num_kv_heads, config.head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            segment_ids=jnp.zeros((batch, max_length), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_length(self) -> int:
        return self.k.shape[2]


class Block(nnx.Module):
    """Pre-norm decoder block: x + attn(norm(x)); x + mlp(norm(x)).

    ``post_norms`` (Gemma 3) adds a norm on each sub-layer's output: x + norm(attn(norm(x))), ...
    ``post_attn_norm`` is the norm *before* the MLP (HF's Llama ``post_attention_layernorm``,
    Gemma's ``pre_feedforward_layernorm``); ``attn_out_norm`` / ``mlp_out_norm`` are the output norms.
    """

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs | None, stack: int | None = None):
        kw = dict(param_dtype=config.param_dtype, stack=stack, rngs=rngs, plus_one=config.norm_plus_one)
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.attn = Attention(config, rngs=rngs, stack=stack)
        self.post_attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.mlp = MLP(config, rngs=rngs, stack=stack)
        if config.post_norms:
            self.attn_out_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
            self.mlp_out_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)

    def __call__(self, x_btd, cos_bth, sin_bth, mask_bts, kv=None, cache_index=None, layer=None, is_local=None,
                 lora_rng=None):
        rng = lora_lib.dropout_keys(lora_rng, 2)
        attn_btd, new_kv = self.attn(self.input_norm(x_btd), cos_bth, sin_bth, mask_bts, kv, cache_index, layer,
                                     is_local, rng[0])
        return self.after_attention(x_btd, attn_btd, rng[1]), new_kv

    def after_attention(self, x_btd: Array, attn_btd: Array, mlp_lora_rng: Array | None = None) -> Array:
        """The rest of the block once attention has run on ``input_norm(x)``: both residual adds
        (with Gemma 3's output norms where configured) and the MLP sub-layer."""
        post = self.attn.config.post_norms
        x_btd = x_btd + (self.attn_out_norm(attn_btd) if post else attn_btd)
        mlp_btd = self.mlp(self.post_attn_norm(x_btd), mlp_lora_rng)
        x_btd = x_btd + (self.mlp_out_norm(mlp_btd) if post else mlp_btd)
        return constrain(x_btd, ("batch", "length", "act_embed"))


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Decoder(nnx.Module):
    """Causal LM: embedding, ``num_layers`` stacked blocks (scanned), final norm, LM head.

    Call it as ``model(input_ids, attention_mask=None, positions=None)`` -> logits [B, T, V].
    ``segment_ids`` packs several sequences into one row (tokens attend within their segment);
    ``cache`` turns on KV-cache decoding and the call then returns ``(logits, new_cache)``.
    """

    rows: TrainableRows | None = None  # trainable rows over a frozen table (a LoRA run's training model only)

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs | None = None, trainable_rows: Sequence[int] = ()):
        """``trainable_rows``: token ids whose embedding rows (and untied head columns) are parameters of
        their own (``rows``, :class:`~bsft_jax.models.rows.TrainableRows`) over a table that is then frozen:
        the model a LoRA run trains, whose gradient never touches the [V, D] table."""
        self.config = config
        pd = config.param_dtype
        self.embed = param(rngs, _normal(), (config.vocab_size, config.hidden_size), ("vocab", "embed"), pd, None)
        self.layers = Block(config, rngs=rngs, stack=config.num_layers)
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=pd, rngs=rngs,
                                  plus_one=config.norm_plus_one)
        if not config.tie_word_embeddings:
            self.lm_head = param(rngs, _normal(), (config.hidden_size, config.vocab_size), ("embed", "vocab"),
                                  pd, None)
        if config.lora is not None:  # after every base weight: the base init does not depend on LoRA
            lora_lib.add_decoder_factors(self.layers, config, rngs)
        if len(trainable_rows):
            self.rows = TrainableRows(trainable_rows, config.hidden_size, tied=config.tie_word_embeddings,
                                      param_dtype=pd)

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        positions: Array | None = None,
        *,
        segment_ids: Array | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
        dropout_rng: Array | None = None,
    ) -> Any:
        """Logits [B, T, V] (``logits_dtype``); with ``cache``, ``(logits, updated cache)``.

        attention_mask: [B, T], 1 for real tokens, 0 for padding (either side).
        positions:      [B, T] RoPE positions; default: count of real tokens before each one
                        (correct for left and right padding, and continuing a cache).
        segment_ids:    [B, T] packed-sequence ids (0 = padding); overrides ``attention_mask``.
        return_hidden:  return the final normed hidden states [B, T, D] instead of logits.
        dropout_rng:    key for LoRA dropout (training); None or no LoRA dropout: deterministic.
        """
        c = self.config
        b, t = input_ids.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
        positions, mask_bts, q_slot, k_slot, k_seg = _positions_and_mask(segment_ids.astype(jnp.int32), positions,
                                                                         cache)
        inputs_of, local_flags = per_layer_inputs(c, positions, mask_bts, q_slot, k_slot, jnp.dtype(c.dtype))
        x_btd = self.embed_tokens(input_ids)
        if cache is None:
            x_btd = self._scan_layers(x_btd, inputs_of, local_flags, dropout_rng)
        else:
            x_btd, (k_out, v_out) = self._scan_layers_cached(x_btd, inputs_of, local_flags, cache)
        x_btd = self.final_norm(x_btd)
        out = x_btd if return_hidden else self.logits(x_btd)
        if cache is None:
            return out
        return out, KVCache(k=k_out, v=v_out, segment_ids=k_seg, index=cache.index + t)

    def _scan_layers(self, x_btd: Array, inputs_of: Callable, local_flags: Array | None,
                     dropout_rng: Array | None) -> Array:
        """The full-sequence forward through every block: one ``lax.scan`` (rematerialised per
        ``config.remat``, ``config.scan_unroll`` layers per step)."""
        c = self.config
        graphdef, layer_state = nnx.split(self.layers)
        # LoRA dropout keys, one per layer (None without dropout: the exact plain program)
        use_dropout = dropout_rng is not None and c.lora is not None and c.lora.dropout > 0
        keys = jax.random.split(dropout_rng, c.num_layers) if use_dropout else None

        def body(x, layer_in):
            state_l, is_local, key = layer_in
            block = nnx.merge(graphdef, state_l)
            cos, sin, mask, is_local = inputs_of(is_local)
            return block(x, cos, sin, mask, is_local=is_local, lora_rng=key)[0], None

        if c.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[c.remat], prevent_cse=False)
        x_btd, _ = jax.lax.scan(body, x_btd, (layer_state, local_flags, keys), unroll=min(c.scan_unroll, c.num_layers))
        return x_btd

    def _scan_layers_cached(self, x_btd: Array, inputs_of: Callable, local_flags: Array | None,
                            cache: KVCache) -> tuple[Array, tuple[Array, Array]]:
        """T new tokens through every block with a KV cache: ``(x, (k, v))``, the stacked cache updated."""
        c = self.config
        graphdef, layer_state = nnx.split(self.layers)

        # Never unrolled (scan_unroll is for training): the in-place cache update needs the loop.
        # The stacked cache rides in the carry and each layer writes only its new slots, so a
        # decode step updates the cache in place rather than rebuilding it as scan outputs.
        def cached_body(carry, layer_in):
            x, kv_all = carry
            state_l, layer, is_local = layer_in
            block = nnx.merge(graphdef, state_l)
            cos, sin, mask, is_local = inputs_of(is_local)
            x, kv_all = block(x, cos, sin, mask, kv_all, cache.index, layer, is_local)
            return (x, kv_all), None

        layers = jnp.arange(c.num_layers, dtype=jnp.int32)
        (x_btd, kv_out), _ = jax.lax.scan(cached_body, (x_btd, (cache.k, cache.v)), (layer_state, layers, local_flags))
        return x_btd, kv_out

    def embed_tokens(self, input_ids: Array) -> Array:
        """Token embeddings [B, T, D] in the compute dtype (times sqrt(D) where ``embed_scale``, Gemma).

        Gemma's scale is applied in the table's (weight) dtype, then the product is cast to the
        compute dtype, as transformers' ``Gemma3TextScaledWordEmbedding`` does (``rows *
        embed_scale.to(weight.dtype)``, the scale an fp32 tensor first): with fp32 weights and bf16
        compute the scale stays sqrt(640) = 25.298..., not bf16's 25.25.
        """
        c = self.config
        # FSDP-gather the table's embed dim before the lookup (as for every other weight): a gather
        # from rows sharded over fsdp into a batch sharded over (data, fsdp) otherwise makes XLA
        # fall back to a full rematerialisation. Vocab rows stay tensor-sharded (partial sums).
        table_vd = constrain(self.embed.value, ("vocab", None))
        rows = getattr(self, "rows", None)  # (LayeredDecoder borrows this method and has none)
        x_btd = jnp.take(table_vd, input_ids, axis=0) if rows is None else rows.lookup(table_vd, input_ids)
        if c.embed_scale:
            x_btd = x_btd * embed_scale(c.hidden_size, table_vd.dtype)
        return constrain(x_btd.astype(jnp.dtype(c.dtype)), ("batch", "length", "act_embed"))

    def head_weight(self, dtype: Any) -> Array | PatchedColumns:
        """The LM head as ``[D, V]`` in ``dtype``: the transposed embedding table when tied.

        Tied heads use the raw table (Gemma's sqrt(D) scales the embedding lookup, not the head).
        ``project()`` on the transposed table makes the weight gradient [D, V] from x and dlogits
        (one V x D transpose back) instead of a transposed copy of dlogits [B*T, V]. With trainable
        ``rows`` it is the frozen head with their columns (:class:`PatchedColumns`, for ``project``).
        """
        tied = self.config.tie_word_embeddings
        table = self.embed.value if tied else self.lm_head.value
        w_dv = table.astype(dtype).T if tied else table.astype(dtype)
        rows = getattr(self, "rows", None)  # (LayeredDecoder borrows this method and has none)
        return w_dv if rows is None else rows.head(w_dv, table.dtype)

    def logits(self, x_btd: Array) -> Array:
        """LM head on final hidden states: [B, T, D] -> [B, T, V] in ``logits_dtype``."""
        out_dtype = jnp.dtype(self.config.logits_dtype)
        logits = project(x_btd, self.head_weight(x_btd.dtype), 1, out_dtype)
        return constrain(logits.astype(out_dtype), ("batch", "length", "act_vocab"))


def embed_scale(hidden_size: int, dtype: Any) -> Array:
    """Gemma's embedding multiplier sqrt(D) in ``dtype`` (the weight dtype), rounded as transformers
    rounds it: to fp32 (``torch.tensor(float)``) first, then to ``dtype``."""
    return jnp.asarray(np.float32(hidden_size**0.5)).astype(dtype)


def per_layer_inputs(c: DecoderConfig, positions_bt: Array, mask_bts: Array, q_slot: Array, k_slot: Array,
                      dtype: Any) -> tuple[Callable[[Array | None], tuple], Array | None]:
    """RoPE tables and masks of the layers, and the per-layer flags the layer scan carries.

    Returns ``(inputs_of, flags)``. ``flags`` [L] is True for sliding-window layers (None when every
    layer is global); ``inputs_of(flag)`` gives one layer's ``(cos, sin, mask, flag)``: the local
    RoPE base and the windowed mask (a query sees itself and the ``sliding_window - 1`` slots
    before it, as transformers' sliding_window_overlay) where the flag (traced, or a Python bool
    for an unrolled layer loop) is set.
    """
    cos_bth, sin_bth = rope_cos_sin(positions_bt, rope_inverse_frequencies(c), dtype)
    if not c.has_sliding_layers:
        return (lambda flag: (cos_bth, sin_bth, mask_bts, None)), None
    cos_l, sin_l = rope_cos_sin(positions_bt, rope_inverse_frequencies(c, local=True), dtype)
    mask_l = mask_bts & ((q_slot[:, None] - k_slot[None, :]) < c.sliding_window)[None]

    def inputs_of(flag: Array) -> tuple:
        pick = functools.partial(jnp.where, flag)
        return pick(cos_l, cos_bth), pick(sin_l, sin_bth), pick(mask_l, mask_bts), flag

    return inputs_of, jnp.asarray(c.sliding_layer_mask)


def _positions_and_mask(segment_ids_bt: Array, positions_bt: Array | None, cache: KVCache | None
                        ) -> tuple[Array, Array, Array, Array, Array]:
    """RoPE positions, the attention mask and the slots of the queries and keys of one call.

    Returns ``(positions [B, T], mask [B, T, S], q_slot [T], k_slot [S], k_seg [B, S])``. Without a
    cache, S = T and a token attends to earlier tokens of its own segment; with one, S is the cache
    length, ``k_seg`` the cache's segment ids with the T new tokens written at ``cache.index``, and
    positions continue from the real tokens already cached (one sequence per row).
    """
    t = segment_ids_bt.shape[1]
    valid_bt = (segment_ids_bt != 0).astype(jnp.int32)
    if cache is None:
        if positions_bt is None:
            positions_bt = _positions_from_segments(segment_ids_bt)
        q_slot, k_slot, k_seg = jnp.arange(t), jnp.arange(t), segment_ids_bt
        q_seg = segment_ids_bt
    else:
        if positions_bt is None:
            before = jnp.sum(cache.segment_ids != 0, axis=1, keepdims=True)
            positions_bt = before + jnp.cumsum(valid_bt, axis=1) - valid_bt
        k_seg = jax.lax.dynamic_update_slice(cache.segment_ids, valid_bt, (0, cache.index))
        q_slot, k_slot = cache.index + jnp.arange(t), jnp.arange(cache.max_length)
        q_seg = jnp.ones_like(segment_ids_bt)  # a cache holds one sequence per row
    mask_bts = (
        (q_seg[:, :, None] == k_seg[:, None, :])
        & (k_seg[:, None, :] != 0)
        & (k_slot[None, None, :] <= q_slot[None, :, None])
    )
    return positions_bt, mask_bts, q_slot, k_slot, k_seg


def _positions_from_segments(segment_ids_bt: Array) -> Array:
    """Positions restarting at 0 for every segment; padding tokens get 0.

    For a single segment with left or right padding this is "number of real tokens before me".
    """
    valid = (segment_ids_bt != 0).astype(jnp.int32)
    t = segment_ids_bt.shape[1]
    idx = jnp.arange(t)[None, :]
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids_bt[:, :1], dtype=bool), segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]], axis=1
    ) & (valid == 1)
    # index of the most recent segment start at or before each token
    last_start = jax.lax.cummax(jnp.where(starts, idx, -1), axis=1)
    # real tokens between the start and here (padding inside a row does not advance positions)
    csum = jnp.cumsum(valid, axis=1)
    before_start = jnp.take_along_axis(csum, jnp.maximum(last_start, 0), axis=1) - jnp.take_along_axis(
        valid, jnp.maximum(last_start, 0), axis=1
    )
    pos = csum - valid - before_start
    return jnp.where((valid == 1) & (last_start >= 0), pos, 0)


def init_decoder(config: DecoderConfig, seed: int = 0) -> Decoder:
    """A randomly initialised decoder on the default device (tests, demos; see sharding for meshes)."""
    return Decoder(config, rngs=nnx.Rngs(params=seed))


def abstract_decoder(config: DecoderConfig) -> Decoder:
    """The decoder with ShapeDtypeStructs instead of arrays: no memory is allocated."""
    return nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(params=0)))


def count_params(model: nnx.Module) -> int:
    """Number of parameters (works on abstract models)."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
