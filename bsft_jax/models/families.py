"""Gemma 3 (``gemma3_text``, incl. MedGemma) and Qwen3: their HF config fields and their presets.

Both families run in the one :class:`~bsft_jax.models.decoder.Decoder`; what sets them apart is
configuration only (see the Gemma 3 / Qwen3 fields of ``DecoderConfig``). This module reads and
writes those fields in the ``config.json`` layouts of transformers 4.x (``rope_theta``,
``rope_local_base_freq``, ``rope_scaling``, ``sliding_window_pattern``) and 5.x
(``rope_parameters`` keyed by layer type), and refuses what the decoder does not implement
(logit soft-capping, bidirectional attention, sliding windows on Qwen3).

It imports nothing from ``config`` at module level (config imports it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

FAMILY_MODEL_TYPES = ("qwen3", "gemma3_text")
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
_ARCHITECTURES = {"qwen3": "Qwen3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}


@dataclasses.dataclass(frozen=True)
class LinearRopeScaling:
    """Position interpolation (``rope_type == "linear"``): frequencies divided by ``factor``."""

    factor: float


Fail = Callable[[str, str], Exception]


def activation_from_hf(hf: dict, fail: Fail) -> str:
    """The MLP activation: ``hidden_activation`` (Gemma) or ``hidden_act``, as a DecoderConfig name."""
    field = "hidden_activation" if hf.get("hidden_activation") else "hidden_act"
    act = hf.get(field) or "silu"
    if act not in _ACTIVATIONS:
        raise fail(field, f"{act!r} is not supported (expected one of {sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[act]


def _rope_of(params: dict, field: str, fail: Fail) -> tuple[float | None, LinearRopeScaling | None]:
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta")
    if rope_type == "default":
        return theta, None
    if rope_type == "linear":
        if "factor" not in params:
            raise fail(field, "linear rope scaling is missing 'factor'")
        return theta, LinearRopeScaling(float(params["factor"]))
    raise fail(field, f"rope_type {rope_type!r} is not supported for this family (expected 'default' or 'linear')")


def _gemma3_fields(hf: dict, fail: Fail) -> dict[str, Any]:
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if hf.get(key) is not None:
            raise fail(key, f"soft-capping ({hf[key]}) is not supported; only null (Gemma 3) is")
    if hf.get("use_bidirectional_attention"):
        raise fail("use_bidirectional_attention", "bidirectional attention is not supported")
    if hf.get("attention_bias"):
        raise fail("attention_bias", "attention biases are not supported for gemma3_text")
    layers = int(hf["num_hidden_layers"])
    layer_types = hf.get("layer_types")
    if not layer_types:  # 4.x files: every `sliding_window_pattern`-th layer is global
        pattern = int(hf.get("sliding_window_pattern", 6))
        layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
    rope = hf.get("rope_parameters")
    if isinstance(rope, dict) and ("full_attention" in rope or "sliding_attention" in rope):
        theta, scaling = _rope_of(rope.get("full_attention") or {}, "rope_parameters.full_attention", fail)
        local_theta, local_scaling = _rope_of(rope.get("sliding_attention") or {},
                                              "rope_parameters.sliding_attention", fail)
        if local_scaling is not None:
            raise fail("rope_parameters.sliding_attention", "rope scaling of sliding layers is not supported")
    else:
        theta, scaling = _rope_of(hf.get("rope_scaling") or {}, "rope_scaling", fail)
        local_theta = hf.get("rope_local_base_freq")
    theta = theta if theta is not None else hf.get("rope_theta", 1_000_000.0)
    local_theta = local_theta if local_theta is not None else 10_000.0
    return dict(
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        norm_plus_one=True, post_norms=True, qk_norm=True, embed_scale=True,
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
        layer_types=tuple(layer_types), sliding_window=int(hf.get("sliding_window") or 4096),
        rope_theta=float(theta), rope_scaling=scaling, rope_local_theta=float(local_theta),
    )


def _qwen3_fields(hf: dict, fail: Fail) -> dict[str, Any]:
    if hf.get("use_sliding_window"):
        raise fail("use_sliding_window", "sliding-window attention is not supported for qwen3; set it to false")
    layer_types = hf.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise fail("layer_types", f"only 'full_attention' layers are supported, got {sorted(set(layer_types))}")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta, scaling = _rope_of(rope, "rope_parameters" if hf.get("rope_parameters") else "rope_scaling", fail)
    bias = bool(hf.get("attention_bias", False))
    return dict(qk_norm=True, qkv_bias=bias, o_bias=bias, rope_scaling=scaling,
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                rope_theta=float(theta if theta is not None else hf.get("rope_theta", 1_000_000.0)))


def family_fields_from_hf(hf: dict, fail: Fail) -> dict[str, Any]:
    """DecoderConfig fields particular to ``hf["model_type"]`` in FAMILY_MODEL_TYPES (plus activation)."""
    fields = _gemma3_fields(hf, fail) if hf["model_type"] == "gemma3_text" else _qwen3_fields(hf, fail)
    fields["activation"] = activation_from_hf(hf, fail)
    if hf["model_type"] == "gemma3_text" and fields["activation"] != "gelu_tanh":
        raise fail("hidden_activation", "gemma3_text needs 'gelu_pytorch_tanh'")
    return fields


def family_to_hf(config: Any, hf: dict[str, Any]) -> dict[str, Any]:
    """Rewrites the generic ``config.json`` dict ``hf`` for a Gemma 3 or Qwen3 ``config``."""
    hf["architectures"] = [_ARCHITECTURES[config.model_type]]
    global_rope: dict[str, Any] = {"rope_theta": config.rope_theta, "rope_type": "default"}
    if isinstance(config.rope_scaling, LinearRopeScaling):
        global_rope.update(rope_type="linear", factor=config.rope_scaling.factor)
        hf["rope_scaling"] = {"rope_type": "linear", "factor": config.rope_scaling.factor}
    if config.model_type == "qwen3":
        hf.update(attention_bias=config.qkv_bias, use_sliding_window=False, sliding_window=None,
                  max_window_layers=config.num_layers, rope_parameters=global_rope,
                  layer_types=["full_attention"] * config.num_layers)
        return hf
    hf.pop("hidden_act", None)
    local_theta = config.rope_local_theta or config.rope_theta
    scalar = config.query_pre_attn_scalar or config.head_dim
    hf.update(  # transformers 5 types query_pre_attn_scalar as int
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=int(scalar) if float(scalar).is_integer()
        else scalar,
        sliding_window=config.sliding_window, layer_types=list(config.layer_types or ()),
        final_logit_softcapping=None, attn_logit_softcapping=None, attention_bias=False,
        use_bidirectional_attention=False, rope_local_base_freq=local_theta,
        rope_parameters={"full_attention": global_rope,
                         "sliding_attention": {"rope_theta": local_theta, "rope_type": "default"}},
    )
    return hf


# ---------------------------------------------------------------------------- presets
def _gemma3_layer_types(layers: int) -> tuple[str, ...]:
    return tuple("sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(layers))


_GEMMA3 = dict(model_type="gemma3_text", activation="gelu_tanh", norm_plus_one=True, post_norms=True,
               qk_norm=True, embed_scale=True, tie_word_embeddings=True, rope_theta=1_000_000.0,
               rope_local_theta=10_000.0, rms_norm_eps=1e-6, head_dim=256, query_pre_attn_scalar=256.0,
               max_position_embeddings=131_072, bos_token_id=2, eos_token_id=1, pad_token_id=0,
               generation_eos_token_ids=(1, 106), source_dtype="bfloat16")
_QWEN3 = dict(model_type="qwen3", qk_norm=True, head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
              max_position_embeddings=40_960, bos_token_id=151643, eos_token_id=151645,
              generation_eos_token_ids=(151645, 151643), source_dtype="bfloat16", vocab_size=151_936)


def _gemma3(layers: int, window: int, **kw: Any) -> dict[str, Any]:
    return dict(_GEMMA3, num_layers=layers, layer_types=_gemma3_layer_types(layers), sliding_window=window, **kw)


# Architectures from the published config.json files. Gemma 3 4B/12B/27B: the text towers of the
# multimodal checkpoints, whose text config has 262,208 embedding rows (the 262,144-token text vocabulary
# plus 64 rows from the image soft token, id 262,144, on), kept here because a text tower taken from
# those checkpoints has them: 64 x hidden_size more parameters than the text-only (262,144-row) totals.
# Gemma 3 1B and MedGemma 27B text are text-only checkpoints with 262,144 rows.
FAMILY_PRESETS: dict[str, dict[str, Any]] = {
    "gemma3_1b": _gemma3(26, 512, vocab_size=262_144, hidden_size=1152, intermediate_size=6912, num_heads=4,
                         num_kv_heads=1, max_position_embeddings=32_768),
    "gemma3_4b": _gemma3(34, 1024, vocab_size=262_208, hidden_size=2560, intermediate_size=10_240, num_heads=8,
                         num_kv_heads=4, rope_scaling=LinearRopeScaling(8.0)),
    "gemma3_12b": _gemma3(48, 1024, vocab_size=262_208, hidden_size=3840, intermediate_size=15_360,
                          num_heads=16, num_kv_heads=8, rope_scaling=LinearRopeScaling(8.0)),
    "gemma3_27b": _gemma3(62, 1024, vocab_size=262_208, hidden_size=5376, intermediate_size=21_504,
                          num_heads=32, num_kv_heads=16, head_dim=128, query_pre_attn_scalar=168.0,
                          rope_scaling=LinearRopeScaling(8.0)),
    "medgemma_27b_text": _gemma3(62, 1024, vocab_size=262_144, hidden_size=5376, intermediate_size=21_504,
                                 num_heads=32, num_kv_heads=16, head_dim=128, query_pre_attn_scalar=168.0,
                                 rope_scaling=LinearRopeScaling(8.0)),
    "qwen3_0_6b": dict(_QWEN3, hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16,
                       num_kv_heads=8, tie_word_embeddings=True),
    "qwen3_8b": dict(_QWEN3, hidden_size=4096, intermediate_size=12_288, num_layers=36, num_heads=32,
                     num_kv_heads=8, tie_word_embeddings=False),
}
