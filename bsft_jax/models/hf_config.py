"""Hugging Face ``config.json`` <-> :class:`~bsft_jax.models.config.DecoderConfig`, both ways.

Reads the layouts written by transformers 4.x (top-level ``rope_theta`` / ``rope_scaling`` /
``torch_dtype``) and 5.x (``rope_parameters`` / ``dtype``) and writes a file both read. Qwen2 and
Llama are read here; Gemma 3 and Qwen3 by :mod:`bsft_jax.models.families`. Anything the decoder
does not implement raises :class:`~bsft_jax.models.config.UnsupportedConfigError` naming the file
and field, instead of silently producing wrong numbers.

The public entry points are ``DecoderConfig.from_hf`` and ``DecoderConfig.to_hf``, which call
:func:`config_from_hf` and :func:`config_to_hf`. This module sits below :mod:`bsft_jax.models.config`:
it reads the field names from :mod:`bsft_jax.models.config_fields` and builds the class it is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any

from bsft_jax import storage
from bsft_jax.models.config_fields import (
    SUPPORTED_MODEL_TYPES,
    Llama3RopeScaling,
    UnsupportedConfigError,
    canonical_dtype,
)
from bsft_jax.models.families import (
    FAMILY_MODEL_TYPES,
    Fail,
    activation_from_hf,
    family_fields_from_hf,
    family_to_hf,
)

if TYPE_CHECKING:  # config.py imports this module; the class to build is passed in (``cls``)
    from bsft_jax.models.config import DecoderConfig


def config_from_hf(cls: type[DecoderConfig], source: str | os.PathLike | dict, runtime: dict[str, Any]
                   ) -> DecoderConfig:
    """``cls`` built from an HF ``config.json`` (path to the file or its folder, or a dict).

    ``generation_config.json`` beside it, if present, supplies ``generation_eos_token_ids``.
    ``runtime`` sets the non-HF fields (``dtype``, ``param_dtype``, ``remat``, ...).
    """
    if isinstance(source, dict):
        return _from_hf_dict(cls, dict(source), {}, "config dict", runtime)
    hf, generation, where = _read_hf_files(os.fspath(source))
    return _from_hf_dict(cls, hf, generation, where, runtime)


def _read_hf_files(path: str) -> tuple[dict, dict, str]:
    """``(config.json, generation_config.json or {}, the config's path)`` of a file or folder path."""
    if storage.isdir(path):
        path = storage.join(path, "config.json")
    if not storage.isfile(path):
        raise FileNotFoundError(f"{path}: no config.json (is this a Hugging Face model folder?)")
    with storage.open_file(path) as f:
        try:
            hf = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    generation: dict[str, Any] = {}
    gen_path = storage.join(storage.dirname(path), "generation_config.json")
    if storage.isfile(gen_path):
        with storage.open_file(gen_path) as f:
            generation = json.load(f)
    return hf, generation, path


def _from_hf_dict(cls: type[DecoderConfig], hf: dict, generation: dict, where: str, runtime: dict
                  ) -> DecoderConfig:
    def fail(field: str, msg: str) -> UnsupportedConfigError:
        return UnsupportedConfigError(f"{where}: field {field!r}: {msg}")

    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise fail("model_type", f"{model_type!r} is not supported (expected one of {SUPPORTED_MODEL_TYPES})")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if key not in hf:
            raise fail(key, "missing")
    if model_type in FAMILY_MODEL_TYPES:  # Gemma 3 / Qwen3: their own reader
        return _from_hf_fields(cls, hf, generation, where, runtime, family_fields_from_hf(hf, fail))
    _check_qwen2_llama(hf, model_type, fail)
    rope_theta, rope_scaling = _qwen2_llama_rope(hf, fail)
    if model_type == "qwen2":
        qkv_bias, o_bias, mlp_bias = True, False, False
    else:
        qkv_bias = o_bias = bool(hf.get("attention_bias", False))
        mlp_bias = bool(hf.get("mlp_bias", False))
    family = dict(rope_theta=float(rope_theta), rope_scaling=rope_scaling, qkv_bias=qkv_bias, o_bias=o_bias,
                  mlp_bias=mlp_bias, tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)))
    return _from_hf_fields(cls, hf, generation, where, runtime, family)


def _check_qwen2_llama(hf: dict, model_type: str, fail: Fail) -> None:
    """Refuses the Qwen2 / Llama options the decoder does not implement."""
    if activation_from_hf(hf, fail) != "silu":
        raise fail("hidden_act", f"{hf.get('hidden_act')!r} is not supported for {model_type} (only 'silu')")
    if hf.get("use_sliding_window"):
        raise fail("use_sliding_window", "sliding-window attention is not supported; set it to false")
    layer_types = hf.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise fail("layer_types", f"only 'full_attention' layers are supported, got {sorted(set(layer_types))}")
    if hf.get("pretraining_tp", 1) not in (1, None):
        raise fail("pretraining_tp", "only 1 is supported")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise fail("partial_rotary_factor", "partial rotary embeddings are not supported")


def _qwen2_llama_rope(hf: dict, fail: Fail) -> tuple[float, Llama3RopeScaling | None]:
    """``(rope_theta, rope_scaling)``: 5.x nests everything under rope_parameters; 4.x has rope_theta +
    rope_scaling."""
    rope = hf.get("rope_parameters")
    if rope is not None:
        rope_field = "rope_parameters"
        rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
        scaling = rope
    else:
        rope_field = "rope_scaling"
        rope_theta = hf.get("rope_theta", 10_000.0)
        scaling = hf.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return rope_theta, None
    if rope_type != "llama3":
        raise fail(rope_field, f"rope_type {rope_type!r} is not supported (expected 'default' or 'llama3')")
    try:
        return rope_theta, Llama3RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise fail(rope_field, f"llama3 rope scaling is missing {e.args[0]!r}") from None


def _from_hf_fields(cls: type[DecoderConfig], hf: dict, generation: dict, where: str, runtime: dict,
                    family: dict) -> DecoderConfig:
    """The fields every family shares, then ``family``'s own, then ``runtime``."""
    model_type = hf["model_type"]
    heads = int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim") or int(hf["hidden_size"]) // heads
    source_dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    eos = hf.get("eos_token_id")
    gen_eos = generation.get("eos_token_id")
    if gen_eos is None:
        gen_eos = ()
    elif isinstance(gen_eos, int):
        gen_eos = (gen_eos,)
    fields = dict(
        model_type=model_type,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32_768)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=hf.get("pad_token_id"),
        generation_eos_token_ids=tuple(gen_eos),
        valid_vocab_size=hf.get("bsft_valid_vocab_size"),
        source_dtype=canonical_dtype(source_dtype, field=f"{where}: dtype"),
    )
    fields.update(family)
    fields.update(runtime)
    return cls(**fields)


def config_to_hf(config: DecoderConfig, dtype: str | None = None) -> dict[str, Any]:
    """The ``config.json`` dict transformers needs to rebuild ``config``'s architecture."""
    c = config
    dtype = canonical_dtype(dtype or c.source_dtype)
    rope_parameters: dict[str, Any] = {"rope_theta": c.rope_theta, "rope_type": "default"}
    if isinstance(c.rope_scaling, Llama3RopeScaling):
        rope_parameters.update(rope_type="llama3", **dataclasses.asdict(c.rope_scaling))
    eos = list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id
    hf: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if c.model_type == "qwen2" else "LlamaForCausalLM"],
        "model_type": c.model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": c.pad_token_id,
        "initializer_range": 0.02,
        "use_cache": True,
        "attention_dropout": 0.0,
        # Both layouts, so transformers 4.x and 5.x read the same file.
        "rope_theta": c.rope_theta,
        "rope_parameters": rope_parameters,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
    if isinstance(c.rope_scaling, Llama3RopeScaling):
        hf["rope_scaling"] = dict(rope_parameters)
    if c.model_type in FAMILY_MODEL_TYPES:
        family_to_hf(c, hf)
    elif c.model_type == "qwen2":
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.num_layers)
    else:
        hf.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias, pretraining_tp=1)
    if c.valid_vocab_size is not None and c.valid_vocab_size != c.vocab_size:
        hf["bsft_valid_vocab_size"] = c.valid_vocab_size
    return hf
