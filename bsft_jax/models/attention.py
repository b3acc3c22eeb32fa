"""Grouped-query attention: the module, its einsum kernel and the fused (cuDNN) one.

The einsum path computes scores and softmax in fp32 (any backend and dtype); the fused path goes
through ``jax.nn.dot_product_attention`` (cuDNN flash attention on GPU) for the full-sequence
forward. KV-cache steps always use the einsums. Query head n = k * G + g reads key/value head k.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bsft_jax.models import lora as lora_lib
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.layers import RMSNorm, _normal, apply_rope, param, project
from bsft_jax.models.sharding import constrain

Array = jax.Array
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # finite: fully masked rows give no NaNs


class Attention(nnx.Module):
    """Grouped-query attention with RoPE; optional q/k/v and output biases (Qwen2 / Llama)."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs | None, stack: int | None = None):
        c, pd = config, config.param_dtype
        d, n, k, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        self.config = config
        self.q_proj = param(rngs, _normal(), (d, n, h), ("embed", "q_heads", "head_dim"), pd, stack)
        self.k_proj = param(rngs, _normal(), (d, k, h), ("embed", "kv_heads", "head_dim"), pd, stack)
        self.v_proj = param(rngs, _normal(), (d, k, h), ("embed", "kv_heads", "head_dim"), pd, stack)
        self.o_proj = param(rngs, _normal(), (n, h, d), ("q_heads", "head_dim", "embed"), pd, stack)
        zeros = jax.nn.initializers.zeros
        if c.qkv_bias:
            self.q_bias = param(rngs, zeros, (n, h), ("q_heads", "head_dim"), pd, stack)
            self.k_bias = param(rngs, zeros, (k, h), ("kv_heads", "head_dim"), pd, stack)
            self.v_bias = param(rngs, zeros, (k, h), ("kv_heads", "head_dim"), pd, stack)
        if c.o_bias:
            self.o_bias = param(rngs, zeros, (d,), ("embed",), pd, stack)
        if c.qk_norm:
            kw = dict(param_dtype=pd, stack=stack, rngs=rngs, plus_one=c.norm_plus_one, axis="head_dim")
            self.q_norm = RMSNorm(h, c.rms_norm_eps, **kw)
            self.k_norm = RMSNorm(h, c.rms_norm_eps, **kw)

    def _project(self, x_btd: Array, name: str, lora_rng: Array | None = None) -> Array:
        w = getattr(self, f"{name}_proj").value.astype(x_btd.dtype)
        y = project(x_btd, w)
        if self.config.qkv_bias:
            y = y + getattr(self, f"{name}_bias").value.astype(y.dtype)
        return lora_lib.add_delta(self, name, x_btd, y, 1, lora_rng)

    def qkv(self, x_btd: Array, cos_bth: Array, sin_bth: Array,
            lora_rngs: tuple[Array | None, ...] = (None, None, None)) -> tuple[Array, Array, Array]:
        """Queries [B, T, N, H], keys and values [B, T, K, H]: q/k normed (where configured), then rotated.

        ``lora_rngs``: LoRA dropout keys for q, k, v (training only)."""
        q_btnh, k_btkh = self._project(x_btd, "q", lora_rngs[0]), self._project(x_btd, "k", lora_rngs[1])
        if self.config.qk_norm:
            q_btnh, k_btkh = self.q_norm(q_btnh), self.k_norm(k_btkh)
        v_btkh = self._project(x_btd, "v", lora_rngs[2])
        return apply_rope(q_btnh, cos_bth, sin_bth), apply_rope(k_btkh, cos_bth, sin_bth), v_btkh

    def output(self, out_btnh: Array, dtype: Any, lora_rng: Array | None = None) -> Array:
        """The output projection (and bias, and LoRA delta) of the attended values: [B, T, N, H] -> [B, T, D]."""
        y_btd = project(out_btnh, self.o_proj.value.astype(dtype), 2)
        if self.config.o_bias:
            y_btd = y_btd + self.o_bias.value.astype(y_btd.dtype)
        return lora_lib.add_delta(self, "o", out_btnh, y_btd, 2, lora_rng)

    def __call__(
        self,
        x_btd: Array,
        cos_bth: Array,
        sin_bth: Array,
        mask_bts: Array,
        kv: tuple[Array, Array] | None = None,
        cache_index: Array | None = None,
        layer: Array | None = None,
        is_local: Array | None = None,
        lora_rng: Array | None = None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """Returns the attention output [B, T, D] and, with a cache, the updated (k, v).

        ``kv`` is the whole stacked cache [L, B, S, K, H] and ``layer`` this block's index in it:
        only the T new slots of that layer are written (in place inside the decode loop, instead
        of rewriting every layer's cache each step). ``is_local`` (a traced bool, sliding-window
        configs only) says this is a sliding layer: ``mask_bts`` then already holds the window, and
        the cuDNN path also gets it as the kernel's static ``local_window_size``.
        """
        c = self.config
        rng = lora_lib.dropout_keys(lora_rng, 4)
        q_btnh, k_btkh, v_btkh = self.qkv(x_btd, cos_bth, sin_bth, tuple(rng[:3]))
        q_btnh = constrain(q_btnh, ("batch", "length", "act_heads", None))
        if kv is None:
            k_bskh, v_bskh, new_kv = k_btkh, v_btkh, None
        else:
            if layer is None or cache_index is None:
                raise ValueError("Attention with a KV cache needs the stacked cache, cache_index and layer")
            zero = jnp.zeros((), jnp.int32)
            start = (layer, zero, cache_index, zero, zero)
            k_all = jax.lax.dynamic_update_slice(kv[0], k_btkh[None].astype(kv[0].dtype), start)
            v_all = jax.lax.dynamic_update_slice(kv[1], v_btkh[None].astype(kv[1].dtype), start)
            new_kv = (k_all, v_all)
            k_bskh = jax.lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False).astype(x_btd.dtype)
            v_bskh = jax.lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False).astype(x_btd.dtype)
        b, t = x_btd.shape[:2]
        impl = "einsum" if kv is not None else resolve_attention_impl(c)
        scale = c.attention_scale if c.query_pre_attn_scalar else None
        if impl == "einsum":
            q_btkgh = q_btnh.reshape(b, t, c.num_kv_heads, c.num_query_groups, c.head_dim)
            out_btkgh = dot_product_attention(q_btkgh, k_bskh, v_bskh, mask_bts, scale=scale)
            out_btnh = out_btkgh.reshape(b, t, c.num_heads, c.head_dim)
        else:
            def fused(window):
                kw = {} if scale is None else dict(scale=scale)
                if window is not None:
                    kw.update(local_window_size=window)
                return lambda: fused_attention(q_btnh, k_bskh, v_bskh, mask_bts, implementation=impl, **kw)

            if is_local is None:
                out_btnh = fused(None)()
            else:  # the kernel's static window on sliding layers: it skips the blocks outside it
                out_btnh = jax.lax.cond(is_local, fused((c.sliding_window - 1, 0)), fused(None))
        return self.output(out_btnh, x_btd.dtype, rng[3]), new_kv


def dot_product_attention(q_btkgh: Array, k_bskh: Array, v_bskh: Array, mask_bts: Array,
                          scale: float | None = None) -> Array:
    """softmax(q k^T * scale) v with fp32 scores/softmax; ``mask_bts`` True where attending is allowed.

    ``scale`` defaults to 1/sqrt(H) (Gemma 3 sets it from ``query_pre_attn_scalar``).
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q_btkgh.shape[-1])
    scores = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask_bts[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bskh.dtype)
    return jnp.einsum("bkgts,bskh->btkgh", probs, v_bskh)


def fused_attention(q_btnh: Array, k_bskh: Array, v_bskh: Array, mask_bts: Array, *,
                    implementation: str = "cudnn", scale: float | None = None,
                    local_window_size: tuple[int, int] | None = None) -> Array:
    """Causal self-attention through ``jax.nn.dot_product_attention`` (cuDNN flash attention on GPU).

    For the full-sequence forward only (T == S, ``mask_bts`` already causal): ``is_causal`` lets the
    kernel skip the upper triangle, and the mask (padding, packed segments) becomes an additive bias
    of finite large negatives, so fully masked padding rows stay finite. Query head n = k * G + g
    reads key/value head k, the grouping of the einsum path. ``implementation="xla"`` runs JAX's
    reference lowering of the same call (used to test this wiring on CPU). ``local_window_size``
    ``(W - 1, 0)``: each query sees itself and the W - 1 keys before it (a sliding layer).
    """
    return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask_bts[:, None, :, :], is_causal=True,
                                        implementation=implementation, scale=scale,
                                        local_window_size=local_window_size)


def resolve_attention_impl(config: DecoderConfig) -> str:
    """The attention kernel this config runs here: "auto" picks cuDNN on GPUs where it applies."""
    if config.attention_impl != "auto":
        return config.attention_impl
    return "cudnn" if jax.default_backend() == "gpu" and config.cudnn_attention_fits else "einsum"

