"""LoRA runs: the base reference a checkpoint carries, rebuilding that base, and the shapes of what it stores.

A LoRA checkpoint (``python -m bsft_jax.train`` with ``model.lora.rank > 0``) holds only the
trainable state (:mod:`bsft_jax.train.lora`): ``params/`` = adapters + behavior rows, ``opt_state/``
= their AdamW moments. ``meta["lora"]`` says how to get the rest back::

    {"config": {"rank", "alpha", "dropout", "targets"}, "base_dtype": "float32",
     "row_ids": [behavior token ids, ascending],
     "base": {"source": "hf" | "scratch", "path": model.hf_path (absolute) or "",
              "sha256": content hash, "hash_of": what was hashed}}

The base is rebuilt the way the run first built it (:func:`bsft_jax.setup.model_setup.build_fresh` with
the checkpoint's own config: the HF folder, or the seeded random init, then the deterministic
vocabulary surgery), and its hash is checked against the reference before anything is trained or
exported. For an HF base the hash covers ``config.json`` and every ``*.safetensors`` file of the
folder; for a from-scratch base it covers the recipe that determines the weights (model config,
seed, behavior tokens and init), since the weights are a pure function of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bsft_jax.checkpoint.layout import CheckpointError, decoder_config_to_dict
from bsft_jax.models.builtin import resolve_model_path
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import abstract_decoder
from bsft_jax.models.lora import LoraParam
from bsft_jax.models.lora_config import LoraConfig
from bsft_jax.setup.model_setup import ModelBundle, build_fresh
from bsft_jax.setup.settings import Settings


def hash_hf_folder(path: str) -> str:
    """sha256 over ``config.json`` and the ``*.safetensors`` files of an HF folder (names and bytes, sorted)."""
    names = sorted(n for n in os.listdir(path) if n == "config.json" or n.endswith(".safetensors"))
    if not any(n.endswith(".safetensors") for n in names):
        raise CheckpointError(f"{path}: no *.safetensors files to hash (is this the run's base model folder?)")
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(os.path.join(path, name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _recipe_hash(s: Settings, bundle: Any) -> str:
    b = s.behavior
    recipe = {"model_config": decoder_config_to_dict(bundle.config), "seed": int(s.seed),
              "behavior": {"enabled": bool(b.enabled), "names": list(b.spec.names), "token_format": b.spec.token_format,
                           "init": b.init, "ids": dict(bundle.behavior_ids)}}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def base_reference(s: Settings, bundle: Any) -> dict[str, Any]:
    """The reference to the frozen base that a LoRA checkpoint stores (see the module docstring)."""
    if s.model.source == "hf":
        path = os.path.abspath(resolve_model_path(s.model.hf_path))
        return {"source": "hf", "path": path, "sha256": hash_hf_folder(path),
                "hash_of": "config.json + *.safetensors"}
    return {"source": "scratch", "path": "", "sha256": _recipe_hash(s, bundle),
            "hash_of": "model config, seed, behavior tokens and init"}


def check_base(saved: dict[str, Any], s: Settings, bundle: Any, where: str) -> None:
    """Raises CheckpointError when the rebuilt base is not the one the checkpoint was trained on."""
    now = base_reference(s, bundle)
    if (saved.get("source"), saved.get("sha256")) != (now["source"], now["sha256"]):
        raise CheckpointError(
            f"{where}: the LoRA base does not match the checkpoint's reference (saved {saved.get('source')} "
            f"{saved.get('path') or ''} sha256 {str(saved.get('sha256'))[:12]}..., found {now['source']} "
            f"{now['path']} sha256 {now['sha256'][:12]}...); point model.hf_path at the original base folder")


def lora_meta(lora: LoraConfig, row_ids: Any, ref: dict[str, Any], dtype: str) -> dict[str, Any]:
    """``meta["lora"]`` of a checkpoint."""
    return {"config": lora.to_dict(), "base_dtype": dtype, "row_ids": [int(i) for i in sorted(row_ids)],
            "base": ref}


def rebuild_base(s: Settings, meta_lora: dict[str, Any], mesh: Any, where: str) -> ModelBundle:
    """The run's base (``ModelBundle``: model, config, tokenizer, ids) rebuilt from ``s`` and checked."""
    bundle = build_fresh(s, mesh)
    check_base(meta_lora["base"], s, bundle, where)
    ids = sorted(int(i) for i in bundle.behavior_ids.values())
    if ids != [int(i) for i in meta_lora["row_ids"]]:
        raise CheckpointError(f"{where}: behavior token ids {ids} differ from the checkpoint's {meta_lora['row_ids']}")
    return bundle


def trainable_shapes(config: DecoderConfig, lora: LoraConfig, row_ids: Sequence[int]) -> dict[str, Any]:
    """The tree a LoRA checkpoint's ``params`` item holds, as ShapeDtypeStructs (no arrays, no mesh)::

        {"lora": {"layers": {"attn": {"q_lora_a": [L, D, r], ...}, "mlp": {...}}},
         "rows": {"embed": [R, D], "lm_head": [D, R] (untied head only)}}

    R: the behavior-token rows (``row_ids``); the dtype is ``config.param_dtype``. The trainer's state
    (:class:`bsft_jax.train.lora.LoraTrainer`) and the host reader (:mod:`bsft_jax.checkpoint.host`) both take
    their shapes from here.
    """
    config = config.replace(lora=lora)
    dtype, rows = jnp.dtype(config.param_dtype), len(row_ids)
    adapters = nnx.to_pure_dict(nnx.state(abstract_decoder(config), LoraParam))
    trained_rows = {"embed": jax.ShapeDtypeStruct((rows, config.hidden_size), dtype)}
    if not config.tie_word_embeddings:
        trained_rows["lm_head"] = jax.ShapeDtypeStruct((config.hidden_size, rows), dtype)
    return {"lora": adapters, "rows": trained_rows}
