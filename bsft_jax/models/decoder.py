"""Flax NNX decoder for Qwen2/Qwen2.5, Llama 3.x, Qwen3 and Gemma 3, numerically matching transformers.

HF-exact choices: half-split ("rotate_half") RoPE with fp32 frequencies, unscaled q/k projections
(so HF import/export is transpose + reshape only), RMSNorm and softmax in fp32, HF epsilons,
optional tied head, Llama 3 / linear RoPE scaling. Gemma 3 and Qwen3 are configuration, not code:
(1 + w) norms, sandwich norms, q/k norms, GeGLU, a scaled embedding and sliding-window layers.

Layers are stored stacked (leading ``layers`` axis on every block parameter) and run with
``jax.lax.scan``, so compile time does not grow with depth. Weights are named in einsum form:
``q_proj: [D, N, H]``, activations ``x_btd`` (axis letters in :mod:`bsft_jax.models.config`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bsft_jax.models import lora as lora_lib
from bsft_jax.models.config import DecoderConfig, LinearRopeScaling
from bsft_jax.models.sharding import constrain

Array = jax.Array
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # finite: fully masked rows give no NaNs


def param(
    rngs: nnx.Rngs | None,
    init: Callable[..., Array],
    shape: tuple[int, ...],
    axes: tuple[str | None, ...],
    dtype: Any,
    stack: int | None,
) -> nnx.Param:
    """A parameter with logical axis names; ``stack`` prepends a ``layers`` axis."""
    if stack is not None:
        shape, axes = (stack, *shape), ("layers", *axes)
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return nnx.Param(init(key, shape, dtype), logical_axes=axes)


def _normal(std: float = 0.02) -> Callable[..., Array]:
    return jax.nn.initializers.normal(std)


# ----------------------------------------------------------------------------- RoPE
def rope_inverse_frequencies(config: DecoderConfig, *, local: bool = False) -> np.ndarray:
    """Inverse frequencies [H/2] in float32, computed as transformers does (incl. llama3/linear scaling).

    ``local``: those of sliding-window layers (base ``rope_local_theta``, never scaled).
    """
    dim = config.head_dim
    theta = (config.rope_local_theta or config.rope_theta) if local else config.rope_theta
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
    scaling = None if local else config.rope_scaling
    if scaling is None:
        return inv_freq
    if isinstance(scaling, LinearRopeScaling):
        return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
    low_freq_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = (np.float32(2 * math.pi) / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / np.float32(scaling.factor), inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / np.float32(scaling.factor) + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions_bt: Array, inv_freq: np.ndarray, dtype: Any) -> tuple[Array, Array]:
    """cos/sin tables [B, T, H] for integer positions, in fp32 then cast (as transformers)."""
    freqs_bth = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb_bth = jnp.concatenate([freqs_bth, freqs_bth], axis=-1)
    return jnp.cos(emb_bth).astype(dtype), jnp.sin(emb_bth).astype(dtype)


def apply_rope(x_btnh: Array, cos_bth: Array, sin_bth: Array) -> Array:
    """Half-split rotary embedding: x * cos + rotate_half(x) * sin."""
    half = x_btnh.shape[-1] // 2
    rotated = jnp.concatenate([-x_btnh[..., half:], x_btnh[..., :half]], axis=-1)
    return x_btnh * cos_bth[:, :, None, :] + rotated * sin_bth[:, :, None, :]


# ----------------------------------------------------------------------------- projections
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def project(x: Array, w: Array, n_in: int = 1, out_dtype: Any = None) -> Array:
    """``x [..., *in] @ w [*in, *out] -> [..., *out]``: the last ``n_in`` axes of x contract w's first.

    The forward is ``jnp.einsum``'s (``out_dtype`` is its ``preferred_element_type``). The custom
    VJP only changes the operand order of the weight gradient: JAX's own rule computes
    ``dot_general(dy, x)`` ([*out, *in]) and transposes it, which XLA:CPU lowers by materialising
    a transposed copy of the activation gradient ``dy`` fused into its producer (strided reads;
    40% of the CPU train step). ``dot_general(x, dy)`` gives [*in, *out] directly and needs only
    ``x`` in another layout, which q/k/v and gate/up share. Same math, same dtypes; on GPU/TPU
    the compiler picks layouts either way.
    """
    return _project_fwd(x, w, n_in, out_dtype)[0]


def _project_fwd(x: Array, w: Array, n_in: int, out_dtype: Any) -> tuple[Array, tuple[Array, Array]]:
    dims = ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ()))
    return jax.lax.dot_general(x, w, dims, preferred_element_type=out_dtype), (x, w)


def _project_bwd(n_in: int, out_dtype: Any, res: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    del out_dtype  # dy carries it
    x, w = res
    n_batch, n_out = x.ndim - n_in, w.ndim - n_in
    # dx [..., *in] = dy [..., *out] . w [*in, *out] over *out (as JAX's rule: accumulate in dy's dtype)
    out_axes = (tuple(range(n_batch, n_batch + n_out)), tuple(range(n_in, w.ndim)))
    dx = jax.lax.dot_general(dy, w, (out_axes, ((), ())), preferred_element_type=dy.dtype)
    # dw [*in, *out] = x [..., *in] . dy [..., *out] over the leading (batch) axes
    batch_axes = tuple(range(n_batch))
    dw = jax.lax.dot_general(x, dy, ((batch_axes, batch_axes), ((), ())), preferred_element_type=dy.dtype)
    return dx.astype(x.dtype), dw.astype(w.dtype)


project.defvjp(_project_fwd, _project_bwd)


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


# ----------------------------------------------------------------------------- modules
class RMSNorm(nnx.Module):
    """RMSNorm computed in fp32, scaled in the input dtype (transformers' Qwen2/Llama RMSNorm).

    ``plus_one`` (Gemma): scaled by ``1 + w`` in fp32 and only then cast; ``w`` starts at zero.
    """

    def __init__(self, dim: int, eps: float, *, param_dtype: Any, stack: int | None = None,
                 rngs: nnx.Rngs | None = None, plus_one: bool = False, axis: str = "norm"):
        self.eps = eps
        self.plus_one = plus_one
        init = jax.nn.initializers.zeros if plus_one else jax.nn.initializers.ones
        self.scale = param(rngs, init, (dim,), (axis,), param_dtype, stack)

    def __call__(self, x: Array) -> Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        if self.plus_one:
            return (x32 * jax.lax.rsqrt(variance + self.eps) * (1.0 + self.scale.value.astype(jnp.float32))
                    ).astype(dtype)
        normed = (x32 * jax.lax.rsqrt(variance + self.eps)).astype(dtype)
        return self.scale.value.astype(dtype) * normed


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
        return _add_lora(self, name, x_btd, y, 1, lora_rng)

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
        return _add_lora(self, "o", out_btnh, y_btd, 2, lora_rng)

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
        rng = _lora_rngs(lora_rng, 4)
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


def _gelu_tanh(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=True)


_ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": _gelu_tanh}


class MLP(nnx.Module):
    """Gated MLP: down(act(gate(x)) * up(x)); SwiGLU (silu) or GeGLU (tanh GELU, Gemma)."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs | None, stack: int | None = None):
        d, f, pd = config.hidden_size, config.intermediate_size, config.param_dtype
        self.config = config
        self.gate_proj = param(rngs, _normal(), (d, f), ("embed", "mlp"), pd, stack)
        self.up_proj = param(rngs, _normal(), (d, f), ("embed", "mlp"), pd, stack)
        self.down_proj = param(rngs, _normal(), (f, d), ("mlp", "embed"), pd, stack)
        if config.mlp_bias:
            zeros = jax.nn.initializers.zeros
            self.gate_bias = param(rngs, zeros, (f,), ("mlp",), pd, stack)
            self.up_bias = param(rngs, zeros, (f,), ("mlp",), pd, stack)
            self.down_bias = param(rngs, zeros, (d,), ("embed",), pd, stack)

    def __call__(self, x_btd: Array, lora_rng: Array | None = None) -> Array:
        dt = x_btd.dtype
        rng = _lora_rngs(lora_rng, 3)
        gate_btf = project(x_btd, self.gate_proj.value.astype(dt))
        up_btf = project(x_btd, self.up_proj.value.astype(dt))
        if self.config.mlp_bias:
            gate_btf = gate_btf + self.gate_bias.value.astype(dt)
            up_btf = up_btf + self.up_bias.value.astype(dt)
        gate_btf = _add_lora(self, "gate", x_btd, gate_btf, 1, rng[0])
        up_btf = _add_lora(self, "up", x_btd, up_btf, 1, rng[1])
        h_btf = constrain(_ACTIVATIONS[self.config.activation](gate_btf) * up_btf, ("batch", "length", "act_mlp"))
        y_btd = project(h_btf, self.down_proj.value.astype(dt))
        if self.config.mlp_bias:
            y_btd = y_btd + self.down_bias.value.astype(dt)
        return _add_lora(self, "down", h_btf, y_btd, 1, rng[2])


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
        rng = _lora_rngs(lora_rng, 2)
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

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs | None = None):
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
        dtype = jnp.dtype(c.dtype)
        b, t = input_ids.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
        segment_ids = segment_ids.astype(jnp.int32)
        valid_bt = (segment_ids != 0).astype(jnp.int32)
        if cache is None:
            if positions is None:
                positions = _positions_from_segments(segment_ids)
            q_slot, k_slot, k_seg = jnp.arange(t), jnp.arange(t), segment_ids
            q_seg = segment_ids
        else:
            if positions is None:
                before = jnp.sum(cache.segment_ids != 0, axis=1, keepdims=True)
                positions = before + jnp.cumsum(valid_bt, axis=1) - valid_bt
            k_seg = jax.lax.dynamic_update_slice(cache.segment_ids, valid_bt, (0, cache.index))
            q_slot, k_slot = cache.index + jnp.arange(t), jnp.arange(cache.max_length)
            q_seg = jnp.ones_like(segment_ids)  # a cache holds one sequence per row
        mask_bts = (
            (q_seg[:, :, None] == k_seg[:, None, :])
            & (k_seg[:, None, :] != 0)
            & (k_slot[None, None, :] <= q_slot[None, :, None])
        )
        inputs_of, local_flags = per_layer_inputs(c, positions, mask_bts, q_slot, k_slot, dtype)
        x_btd = self.embed_tokens(input_ids)

        graphdef, layer_state = nnx.split(self.layers)

        if cache is None:
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
            x_btd, _ = jax.lax.scan(body, x_btd, (layer_state, local_flags, keys),
                                    unroll=min(c.scan_unroll, c.num_layers))
        else:
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
            (x_btd, kv_out), _ = jax.lax.scan(cached_body, (x_btd, (cache.k, cache.v)),
                                              (layer_state, layers, local_flags))
        x_btd = self.final_norm(x_btd)
        if return_hidden:
            out = x_btd
        else:
            out = self.logits(x_btd)
        if cache is None:
            return out
        new_cache = KVCache(k=kv_out[0], v=kv_out[1], segment_ids=k_seg, index=cache.index + t)
        return out, new_cache

    def embed_tokens(self, input_ids: Array) -> Array:
        """Token embeddings [B, T, D] in the compute dtype (times sqrt(D) where ``embed_scale``, Gemma)."""
        c = self.config
        dtype = jnp.dtype(c.dtype)
        # FSDP-gather the table's embed dim before the lookup (as for every other weight): a gather
        # from rows sharded over fsdp into a batch sharded over (data, fsdp) otherwise makes XLA
        # fall back to a full rematerialisation. Vocab rows stay tensor-sharded (partial sums).
        table_vd = constrain(self.embed.value, ("vocab", None))
        x_btd = jnp.take(table_vd, input_ids, axis=0).astype(dtype)
        if c.embed_scale:  # Gemma: sqrt(D), rounded to the compute dtype as transformers does
            x_btd = x_btd * jnp.asarray(c.hidden_size**0.5, dtype)
        return constrain(x_btd, ("batch", "length", "act_embed"))

    def head_weight(self, dtype: Any) -> Array:
        """The LM head as ``[D, V]`` in ``dtype``: the transposed embedding table when tied.

        Tied heads use the raw table (Gemma's sqrt(D) scales the embedding lookup, not the head).
        ``project()`` on the transposed table makes the weight gradient [D, V] from x and dlogits
        (one V x D transpose back) instead of a transposed copy of dlogits [B*T, V].
        """
        if self.config.tie_word_embeddings:
            return self.embed.value.astype(dtype).T
        return self.lm_head.value.astype(dtype)

    def logits(self, x_btd: Array) -> Array:
        """LM head on final hidden states: [B, T, D] -> [B, T, V] in ``logits_dtype``."""
        out_dtype = jnp.dtype(self.config.logits_dtype)
        logits = project(x_btd, self.head_weight(x_btd.dtype), 1, out_dtype)
        return constrain(logits.astype(out_dtype), ("batch", "length", "act_vocab"))


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


def _lora_rngs(key: Array | None, n: int) -> list[Array | None]:
    """``n`` independent dropout keys from ``key`` (or ``n`` Nones when there is no dropout)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def _add_lora(module: nnx.Module, name: str, x: Array, y: Array, n_in: int, rng: Array | None) -> Array:
    """``y`` plus projection ``name``'s LoRA term when the module has one (else ``y`` untouched)."""
    lora = module.config.lora
    if lora is None:
        return y
    d = lora_lib.delta(module, name, x, n_in, lora.scale, lora.dropout, rng)
    return y if d is None else y + d


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
