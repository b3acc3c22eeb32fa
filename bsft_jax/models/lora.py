"""LoRA adapters for the decoder's projections, and the merge back into the base weights.

A target projection ``W [*in, *out]`` gains two factors ``A [*in, r]`` and ``B [r, *out]`` and
computes ``x W + (alpha / r) * dropout(x) A B`` (the LoRA paper; PEFT's default scaling). ``B``
starts at zero, so a fresh adapter leaves the model's outputs exactly as they were. Factors are
stacked on the ``layers`` axis like every block weight (one scanned block) and carry logical axes
(``lora_rank`` is replicated), so the one rules table shards them with their projection.

Targets use the projections' logical names: q, k, v, o (attention) and gate, up, down (MLP).
``LoraConfig(rank=0)`` (or no targets) is off: the decoder then has no adapter parameters and
runs the exact same program as without this module.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bsft_jax.models.lora_config import (  # noqa: F401 (re-exported)
    ATTENTION_TARGETS,
    MLP_TARGETS,
    TARGETS,
    LoraConfig,
    lora_config_from,
)

Array = jax.Array


class LoraParam(nnx.Param):
    """A LoRA factor: a parameter (so ``nnx.Param`` filters see it) of its own type (so the trainer can
    select the adapter alone with ``nnx.filterlib`` / ``nnx.state(model, LoraParam)``)."""


def add_factors(module: nnx.Module, lora: LoraConfig | None, names: tuple[str, ...], shapes: dict[str, Any],
                rngs: nnx.Rngs | None, dtype: Any, stack: int | None) -> None:
    """Creates ``{name}_lora_a`` / ``{name}_lora_b`` on ``module`` for each targeted projection name.

    ``shapes[name] = (in_shape, in_axes, out_shape, out_axes)``. A is drawn like PEFT's default
    (uniform, bound 1/sqrt(fan_in)), B is zero.
    """
    if lora is None:
        return
    r = int(lora.rank)
    for name in names:
        if name not in lora.targets:
            continue
        in_shape, in_axes, out_shape, out_axes = shapes[name]
        fan_in = int(np.prod(in_shape))
        a_shape, a_axes = (*in_shape, r), (*in_axes, "lora_rank")
        b_shape, b_axes = (r, *out_shape), ("lora_rank", *out_axes)
        if stack is not None:
            a_shape, a_axes = (stack, *a_shape), ("layers", *a_axes)
            b_shape, b_axes = (stack, *b_shape), ("layers", *b_axes)
        key = rngs.params() if rngs is not None else jax.random.key(0)
        bound = 1.0 / np.sqrt(fan_in)
        a = jax.random.uniform(key, a_shape, dtype, -bound, bound)
        setattr(module, f"{name}_lora_a", LoraParam(a, logical_axes=a_axes))
        setattr(module, f"{name}_lora_b", LoraParam(jnp.zeros(b_shape, dtype), logical_axes=b_axes))


def add_decoder_factors(block: nnx.Module, config: Any, rngs: nnx.Rngs | None) -> None:
    """LoRA factors on a stacked decoder ``Block``'s targeted projections (the shapes of its weights)."""
    c = config
    d, n, k, h, f = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size
    emb, qh, kh = (d,), (n, h), (k, h)
    e_ax, q_ax, k_ax = ("embed",), ("q_heads", "head_dim"), ("kv_heads", "head_dim")
    attn = {"q": (emb, e_ax, qh, q_ax), "k": (emb, e_ax, kh, k_ax), "v": (emb, e_ax, kh, k_ax),
            "o": (qh, q_ax, emb, e_ax)}
    mlp = {"gate": (emb, e_ax, (f,), ("mlp",)), "up": (emb, e_ax, (f,), ("mlp",)),
           "down": ((f,), ("mlp",), emb, e_ax)}
    add_factors(block.attn, c.lora, ATTENTION_TARGETS, attn, rngs, c.param_dtype, c.num_layers)
    add_factors(block.mlp, c.lora, MLP_TARGETS, mlp, rngs, c.param_dtype, c.num_layers)


def delta(module: nnx.Module, name: str, x: Array, n_in: int, scale: float, dropout: float,
          rng: Array | None) -> Array | None:
    """``scale * dropout(x) A B`` for projection ``name`` of ``module``, or None if it has no adapter.

    ``x [..., *in]`` (the last ``n_in`` axes contract A); the result has x's dtype. Dropout applies
    only when ``rng`` is given (training) and the rate is positive.
    """
    a = getattr(module, f"{name}_lora_a", None)
    if a is None:
        return None
    b = getattr(module, f"{name}_lora_b")
    dt = x.dtype
    if rng is not None and dropout > 0.0:
        keep = jax.random.bernoulli(rng, 1.0 - dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - dropout), 0).astype(dt)
    y = low_rank(x, a.value.astype(dt), b.value.astype(dt), n_in)
    return (y * jnp.asarray(scale, dt)).astype(dt)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def low_rank(x: Array, a: Array, b: Array, n_in: int) -> Array:
    """``x [..., *in] . A [*in, r] . B [r, *out] -> [..., *out]`` (the last ``n_in`` axes of x contract A).

    The forward is two ``dot_general``s. The custom VJP only picks the operand order of the factor
    gradients so that the big activation (``x`` for A, ``dy`` for B) is always the dot's right operand
    in its own layout, and the transposed operand is the rank-sized one: JAX's own rule computes
    ``dB`` as ``dot_general(dy, h)`` ([*out, r], transposed back), which XLA:CPU lowers by writing a
    transposed copy of the activation gradient ``dy`` [..., *out] (fused into its producer, strided
    writes) for every targeted projection. Here ``dB = dot_general(h, dy)`` reads ``h`` [..., r]
    transposed instead, and ``dA`` is ``dot_general(dh, x)`` ([r, *in], the small result moved back).
    Same math and dtypes as JAX's rule (accumulation in ``dy``'s dtype).
    """
    return _low_rank_fwd(x, a, b, n_in)[0]


def _low_rank_fwd(x: Array, a: Array, b: Array, n_in: int) -> tuple[Array, tuple[Array, ...]]:
    in_axes = tuple(range(x.ndim - n_in, x.ndim))
    h = jax.lax.dot_general(x, a, ((in_axes, tuple(range(n_in))), ((), ())))  # [..., r]
    y = jax.lax.dot_general(h, b, (((h.ndim - 1,), (0,)), ((), ())))  # [..., *out]
    return y, (x, a, b, h)


def _low_rank_bwd(n_in: int, res: tuple[Array, ...], dy: Array) -> tuple[Array, Array, Array]:
    x, a, b, h = res
    n_batch = h.ndim - 1
    batch = tuple(range(n_batch))
    out_axes = tuple(range(n_batch, dy.ndim))
    # dh [..., r] = dy [..., *out] . B [r, *out] over *out
    dh = jax.lax.dot_general(dy, b, ((out_axes, tuple(range(1, b.ndim))), ((), ())), preferred_element_type=dy.dtype)
    # dB [r, *out] = h [..., r] . dy [..., *out] over the batch axes
    db = jax.lax.dot_general(h, dy, ((batch, batch), ((), ())), preferred_element_type=dy.dtype)
    # dx [..., *in] = dh [..., r] . A [*in, r] over r
    dx = jax.lax.dot_general(dh, a, (((n_batch,), (n_in,)), ((), ())), preferred_element_type=dy.dtype)
    # dA [*in, r] = (dh [..., r] . x [..., *in] over the batch axes) [r, *in], moved to [*in, r]
    da = jnp.moveaxis(jax.lax.dot_general(dh.astype(x.dtype), x, ((batch, batch), ((), ())),
                                          preferred_element_type=dy.dtype), 0, -1)
    return dx.astype(x.dtype), da.astype(a.dtype), db.astype(b.dtype)


low_rank.defvjp(_low_rank_fwd, _low_rank_bwd)


def dropout_keys(key: Array | None, n: int) -> list[Array | None]:
    """``n`` independent dropout keys from ``key`` (or ``n`` Nones when there is no dropout)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def add_delta(module: nnx.Module, name: str, x: Array, y: Array, n_in: int, rng: Array | None) -> Array:
    """``y`` plus projection ``name``'s LoRA term when ``module`` has one (else ``y`` untouched)."""
    lora = module.config.lora
    if lora is None:
        return y
    d = delta(module, name, x, n_in, lora.scale, lora.dropout, rng)
    return y if d is None else y + d


def merge_factors(w: Any, a: Any, b: Any, scale: float, dtype: Any = None) -> Any:
    """``w + scale * A B``: the LoRA merge, taken in fp32 and cast once to ``dtype`` (default: ``w``'s).

    ``w [*in, *out]``, ``a [*in, r]``, ``b [r, *out]``, or all three with a leading ``layers`` axis
    (one batched matmul). NumPy arrays merge on the host, jax arrays where they live: the same ops.
    """
    lead = (a.shape[0],) if w.ndim == a.ndim + b.ndim - 3 else ()  # stacked: [L, ...] on all three
    r = a.shape[-1]
    prod = a.reshape(*lead, -1, r).astype(np.float32) @ b.reshape(*lead, r, -1).astype(np.float32)
    return (w.astype(np.float32) + np.float32(scale) * prod.reshape(w.shape)).astype(dtype or w.dtype)


def merged_weight(w: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float, dtype: Any) -> np.ndarray:
    """:func:`merge_factors` on the host, returned in ``dtype``, a stack merged layer by layer.

    ``w [*in, *out]``, ``a [*in, r]``, ``b [r, *out]`` (an extra leading ``layers`` axis on all three
    is handled layer by layer, so only one layer's product is alive at a time).
    """
    if w.ndim == a.ndim + b.ndim - 3:  # stacked: w [L, *in, *out], a [L, *in, r], b [L, r, *out]
        out = np.empty(w.shape, dtype)
        for i in range(w.shape[0]):
            out[i] = merged_weight(w[i], a[i], b[i], scale, dtype)
        return out
    return merge_factors(w, a, b, scale, dtype)


def projection_owner(name: str) -> str:
    """``"attn"`` or ``"mlp"``: the block sub-module that holds projection ``name``."""
    return "attn" if name in ATTENTION_TARGETS else "mlp"
