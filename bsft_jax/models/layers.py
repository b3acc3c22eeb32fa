"""The decoder's building blocks: parameters, RoPE, the projection op, RMSNorm and the gated MLP.

HF-exact numerics (see :mod:`bsft_jax.models.decoder`): half-split ("rotate_half") RoPE with fp32
frequencies (Llama 3 / linear scaling included), RMSNorm in fp32 (Gemma's ``1 + w`` variant), and
SwiGLU / GeGLU MLPs. Weights are named in einsum form (``gate_proj: [D, F]``), activations
``x_btd``; ``stack`` puts a leading ``layers`` axis on every parameter (the scanned block).
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
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PatchedColumns:
    """A frozen weight ``base [*in, V]`` whose columns ``ids`` are ``cols [*in, R]`` instead: the LM head of a
    LoRA run, frozen but for the behavior tokens' columns (:class:`bsft_jax.models.rows.TrainableRows`).

    :func:`project` computes ``x . base`` with no gradient to ``base`` (so the compiled step has no
    [*in, V] weight-gradient matmul, only the activation gradient) and the R columns ``x . cols`` on
    their own, written over theirs: the gradient w.r.t. ``cols`` is an [*in, R] product. ``base``
    is frozen: it gets a zero gradient.
    """

    base: Array
    cols: Array
    ids: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))


def project(x: Array, w: Array | PatchedColumns, n_in: int = 1, out_dtype: Any = None) -> Array:
    """``x [..., *in] @ w [*in, *out] -> [..., *out]``: the last ``n_in`` axes of x contract w's first.

    ``w`` may be a :class:`PatchedColumns` (a frozen head with a few trainable columns).
    """
    if isinstance(w, PatchedColumns):
        return _patched(x, jax.lax.stop_gradient(w.base), w.cols, w.ids, n_in, out_dtype)
    return _dense(x, w, n_in, out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _patched(x: Array, base: Array, cols: Array, ids: tuple[int, ...], n_in: int, out_dtype: Any) -> Array:
    """:func:`project` of a :class:`PatchedColumns`: ``x . base`` with columns ``ids`` set to ``x . cols``.

    The custom VJP keeps the output gradient ``g`` [..., V] whole: ``dx = g . base^T + g[..., ids] .
    (cols - base[:, ids])^T``, the second term swapping the R frozen columns for the trained ones,
    where JAX's rule for the scatter would first write a copy of ``g`` with those columns zeroed (a
    pass over [B, T, V]). ``dcols = x^T . g[..., ids]``; ``base`` gets none (zeros, never computed).
    """
    return _patched_fwd(x, base, cols, ids, n_in, out_dtype)[0]


def _patched_fwd(x: Array, base: Array, cols: Array, ids: tuple[int, ...], n_in: int, out_dtype: Any
                 ) -> tuple[Array, tuple[Array, Array, Array]]:
    y = _project_fwd(x, base, n_in, out_dtype)[0]
    y_cols = _project_fwd(*_narrow_operands(x, cols, out_dtype), n_in, out_dtype)[0]  # [..., R]
    return y.at[..., np.asarray(ids)].set(y_cols, indices_are_sorted=True, unique_indices=True), (x, base, cols)


def _patched_bwd(ids: tuple[int, ...], n_in: int, out_dtype: Any, res: tuple[Array, Array, Array], g: Array
                 ) -> tuple[Array, Array, Array]:
    x, base, cols = res
    n_batch, index = x.ndim - n_in, np.asarray(ids)
    g_cols = g[..., index]  # [..., R]
    swap = cols.astype(g.dtype) - base[..., index].astype(g.dtype)  # [*in, R]
    dx = _input_grad(g, base, n_batch) + _input_grad(g_cols, swap, n_batch)
    dcols = _weight_grad(x, g_cols, n_batch)
    return dx.astype(x.dtype), jnp.zeros_like(base), dcols.astype(cols.dtype)


_patched.defvjp(_patched_fwd, _patched_bwd)


def _narrow_operands(x: Array, cols: Array, out_dtype: Any) -> tuple[Array, Array]:
    """The operands of the narrow ``x . cols`` product ([..., R], R a few columns), upcast to ``out_dtype``
    on XLA:CPU when both are narrower: XLA:CPU runs a dot this thin through its runtime dot (not the
    fused emitter the [D, V] head takes), which has no bf16 x bf16 -> f32 kernel ("Unsupported element
    type for DotThunk"). The upcast is exact (bf16 -> f32), the product is the same f32 accumulation.
    GPUs and TPUs keep the bf16 operands (their native mixed-precision dot)."""
    out = jnp.dtype(out_dtype) if out_dtype is not None else None
    if (out is None or jax.default_backend() != "cpu" or x.dtype == out
            or jnp.promote_types(x.dtype, cols.dtype) == out):
        return x, cols
    return x.astype(out), cols.astype(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense(x: Array, w: Array, n_in: int = 1, out_dtype: Any = None) -> Array:
    """:func:`project` of a plain weight.

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
    return _input_grad(dy, w, x.ndim - n_in).astype(x.dtype), _weight_grad(x, dy, x.ndim - n_in).astype(w.dtype)


def _input_grad(dy: Array, w: Array, n_batch: int) -> Array:
    """dx [..., *in] = dy [..., *out] . w [*in, *out] over *out (as JAX's rule: accumulate in dy's dtype)."""
    n_out = dy.ndim - n_batch
    out_axes = (tuple(range(n_batch, dy.ndim)), tuple(range(w.ndim - n_out, w.ndim)))
    return jax.lax.dot_general(dy, w, (out_axes, ((), ())), preferred_element_type=dy.dtype)


def _weight_grad(x: Array, dy: Array, n_batch: int) -> Array:
    """dw [*in, *out] = x [..., *in] . dy [..., *out] over the leading ``n_batch`` (batch) axes."""
    batch_axes = tuple(range(n_batch))
    return jax.lax.dot_general(x, dy, ((batch_axes, batch_axes), ((), ())), preferred_element_type=dy.dtype)


_dense.defvjp(_project_fwd, _project_bwd)



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
        rng = lora_lib.dropout_keys(lora_rng, 3)
        gate_btf = project(x_btd, self.gate_proj.value.astype(dt))
        up_btf = project(x_btd, self.up_proj.value.astype(dt))
        if self.config.mlp_bias:
            gate_btf = gate_btf + self.gate_bias.value.astype(dt)
            up_btf = up_btf + self.up_bias.value.astype(dt)
        gate_btf = lora_lib.add_delta(self, "gate", x_btd, gate_btf, 1, rng[0])
        up_btf = lora_lib.add_delta(self, "up", x_btd, up_btf, 1, rng[1])
        h_btf = constrain(_ACTIVATIONS[self.config.activation](gate_btf) * up_btf, ("batch", "length", "act_mlp"))
        y_btd = project(h_btf, self.down_proj.value.astype(dt))
        if self.config.mlp_bias:
            y_btd = y_btd + self.down_bias.value.astype(dt)
        return lora_lib.add_delta(self, "down", h_btf, y_btd, 1, rng[2])


