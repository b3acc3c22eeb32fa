"""The Hugging Face <-> NNX weight table: one declarative name table used in both directions.

Each row of :func:`weight_table` names an HF tensor (``{i}`` stands for the layer index), the
NNX parameter path it maps to, the layout change (transpose / head reshape only: our RoPE and
projections are HF-exact) and the HF shape, which is asserted on every tensor. Loading
(:mod:`bsft_jax.models.hf`) and saving (:mod:`bsft_jax.models.hf_save`) both read it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable

import numpy as np

from bsft_jax.models.config import DecoderConfig

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one HF tensor's layout becomes ours and back."""

    name: str
    to_nnx: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]  # (hf array, nnx shape) -> nnx array
    to_hf: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]  # (nnx array, hf shape) -> hf array


IDENTITY = Layout("identity", lambda a, s: a, lambda a, s: a)
# torch Linear [out, in] <-> einsum weight [in, ...out dims]
LINEAR = Layout("linear", lambda a, s: a.T.reshape(s), lambda a, s: a.reshape(a.shape[0], -1).T)
# torch Linear [D, N*H] (o_proj) <-> [N, H, D]
LINEAR_HEADS_IN = Layout("linear_heads_in", lambda a, s: a.T.reshape(s), lambda a, s: a.reshape(-1, a.shape[-1]).T)
# bias [N*H] <-> [N, H]
RESHAPE = Layout("reshape", lambda a, s: a.reshape(s), lambda a, s: a.reshape(s))


@dataclasses.dataclass(frozen=True)
class WeightRule:
    """One row of the HF <-> NNX table."""

    hf_key: str  # contains "{i}" for per-layer tensors
    nnx_path: tuple[str, ...]
    layout: Layout
    hf_shape: tuple[int, ...]

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_key

    @functools.cached_property
    def pattern(self) -> re.Pattern:
        return re.compile("^" + re.escape(self.hf_key).replace(r"\{i\}", r"(\d+)") + "$")


def weight_table(c: DecoderConfig) -> list[WeightRule]:
    """Every HF tensor of this architecture, its NNX path, layout and HF shape."""
    d, f, n, k, h, v = c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size
    L = "model.layers.{i}."
    rows: list[tuple[str, str, Layout, tuple[int, ...]]] = [
        ("model.embed_tokens.weight", "embed", IDENTITY, (v, d)),
        ("model.norm.weight", "final_norm/scale", IDENTITY, (d,)),
        (L + "input_layernorm.weight", "layers/input_norm/scale", IDENTITY, (d,)),
        # HF's post_attention_layernorm is the pre-MLP norm in Llama/Qwen, an output norm in Gemma 3
        (L + "post_attention_layernorm.weight",
         "layers/attn_out_norm/scale" if c.post_norms else "layers/post_attn_norm/scale", IDENTITY, (d,)),
        (L + "self_attn.q_proj.weight", "layers/attn/q_proj", LINEAR, (n * h, d)),
        (L + "self_attn.k_proj.weight", "layers/attn/k_proj", LINEAR, (k * h, d)),
        (L + "self_attn.v_proj.weight", "layers/attn/v_proj", LINEAR, (k * h, d)),
        (L + "self_attn.o_proj.weight", "layers/attn/o_proj", LINEAR_HEADS_IN, (d, n * h)),
        (L + "mlp.gate_proj.weight", "layers/mlp/gate_proj", LINEAR, (f, d)),
        (L + "mlp.up_proj.weight", "layers/mlp/up_proj", LINEAR, (f, d)),
        (L + "mlp.down_proj.weight", "layers/mlp/down_proj", LINEAR, (d, f)),
    ]
    if not c.tie_word_embeddings:
        rows.append(("lm_head.weight", "lm_head", LINEAR, (v, d)))
    if c.qkv_bias:
        rows += [
            (L + "self_attn.q_proj.bias", "layers/attn/q_bias", RESHAPE, (n * h,)),
            (L + "self_attn.k_proj.bias", "layers/attn/k_bias", RESHAPE, (k * h,)),
            (L + "self_attn.v_proj.bias", "layers/attn/v_bias", RESHAPE, (k * h,)),
        ]
    if c.o_bias:
        rows.append((L + "self_attn.o_proj.bias", "layers/attn/o_bias", IDENTITY, (d,)))
    if c.post_norms:
        rows += [
            (L + "pre_feedforward_layernorm.weight", "layers/post_attn_norm/scale", IDENTITY, (d,)),
            (L + "post_feedforward_layernorm.weight", "layers/mlp_out_norm/scale", IDENTITY, (d,)),
        ]
    if c.qk_norm:
        rows += [
            (L + "self_attn.q_norm.weight", "layers/attn/q_norm/scale", IDENTITY, (h,)),
            (L + "self_attn.k_norm.weight", "layers/attn/k_norm/scale", IDENTITY, (h,)),
        ]
    if c.mlp_bias:
        rows += [
            (L + "mlp.gate_proj.bias", "layers/mlp/gate_bias", IDENTITY, (f,)),
            (L + "mlp.up_proj.bias", "layers/mlp/up_bias", IDENTITY, (f,)),
            (L + "mlp.down_proj.bias", "layers/mlp/down_bias", IDENTITY, (d,)),
        ]
    return [WeightRule(hf, tuple(path.split("/")), layout, shape) for hf, path, layout, shape in rows]


def expected_hf_keys(c: DecoderConfig) -> list[str]:
    """All tensor names an HF checkpoint of this architecture holds."""
    keys = []
    for rule in weight_table(c):
        if rule.per_layer:
            keys += [rule.hf_key.format(i=i) for i in range(c.num_layers)]
        else:
            keys.append(rule.hf_key)
    return keys



def match_rule(table: list[WeightRule], key: str) -> tuple[WeightRule, int | None] | None:
    """The rule of HF tensor ``key`` and its layer index (None: not per layer), or None if no rule matches."""
    for rule in table:
        m = rule.pattern.match(key)
        if m:
            return rule, (int(m.group(1)) if rule.per_layer else None)
    return None

