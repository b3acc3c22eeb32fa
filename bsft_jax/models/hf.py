"""Hugging Face <-> NNX weights: loading here, saving in :mod:`bsft_jax.models.hf_save`, both by the one
declarative name table of :mod:`bsft_jax.models.hf_table` (re-exported here, with the saving functions).

``load_hf`` streams one safetensors file at a time, one tensor at a time, straight into the
target shardings: peak host memory is about one tensor (one shard at worst) beyond the model.
``save_hf`` writes sharded safetensors, the index, ``config.json``, ``generation_config.json``
and the tokenizer, into a temporary folder that is renamed into place only when complete.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from bsft_jax import storage
from bsft_jax.errors import UserError
from bsft_jax.models import safetensors_io
from bsft_jax.models.config import DecoderConfig, canonical_dtype
from bsft_jax.models.decoder import Decoder, abstract_decoder
from bsft_jax.models.hf_save import (  # noqa: F401 (re-exported: hf is where callers import them)
    generation_config_dict,
    iter_hf_tensors,
    save_hf,
    save_tokenizer,
)
from bsft_jax.models.hf_table import (  # noqa: F401 (re-exported)
    IDENTITY,
    LINEAR,
    LINEAR_HEADS_IN,
    RESHAPE,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    Layout,
    WeightRule,
    expected_hf_keys,
    match_rule,
    weight_table,
)
from bsft_jax.models.sharding import state_shardings

log = logging.getLogger(__name__)

# Buffers some checkpoints carry that are recomputed here, not loaded.
_IGNORED_HF_KEYS = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


class WeightLoadError(UserError, ValueError):
    """A checkpoint's tensors do not match the architecture in its config.json."""


# ----------------------------------------------------------------------------- files
def checkpoint_files(path: str | os.PathLike) -> list[str]:
    """The safetensors files of an HF folder (index order), or a clear error."""
    path = os.fspath(path)
    if not storage.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory (expected a Hugging Face model folder)")
    index = storage.join(path, SAFETENSORS_INDEX)
    if storage.isfile(index):
        with storage.open_file(index) as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise WeightLoadError(f"{index}: not a valid safetensors index ({e})") from None
        files = list(dict.fromkeys(weight_map.values()))
        missing = [fn for fn in files if not storage.isfile(storage.join(path, fn))]
        if missing:
            raise WeightLoadError(f"{index}: lists shard(s) that do not exist: {missing}")
        return [storage.join(path, fn) for fn in files]
    single = storage.join(path, SAFETENSORS_SINGLE)
    if storage.isfile(single):
        return [single]
    others = sorted(fn for fn in storage.listdir(path) if fn.endswith((".bin", ".pt", ".pth", ".msgpack", ".h5")))
    hint = f" (found {others}: convert them to safetensors first)" if others else ""
    raise WeightLoadError(f"{path}: no weights: neither {SAFETENSORS_SINGLE} nor {SAFETENSORS_INDEX}{hint}")


# ----------------------------------------------------------------------------- placement
def _to_device(arr: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """Host array -> (possibly multi-host) global array; each process reads only its shards."""
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stacked: jax.Array, layer: jax.Array, i: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_index_in_dim(stacked, layer.astype(stacked.dtype), i, 0)


def _zeros(shape, dtype, sharding) -> jax.Array:
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()


def _drop_leading_axis(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
    return sharding


def load_hf(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    compute_dtype: str | None = None,
    mesh: Mesh | None = None,
    **config_overrides: Any,
) -> tuple[Decoder, DecoderConfig]:
    """Loads a local HF Qwen2/Llama/Qwen3/Gemma 3 (text) folder (or ``builtin:<name>``) into a :class:`Decoder`.

    dtype:          parameter dtype (weights are cast from the file's bf16/fp16/fp32).
    compute_dtype:  activation dtype (default: ``dtype``).
    mesh:           place every parameter directly in its sharding from the rules table.
    config_overrides: extra DecoderConfig fields (``remat``, ``logits_dtype``, ...).

    Returns ``(model, config)``. Raises naming the folder/tensor for missing weights, unexpected
    tensors and wrong shapes.
    """
    # Not at module level: models/__init__ imports this module, and `python -m bsft_jax.models.builtin` must
    # find builtin not yet imported when runpy executes it (else runpy warns on stderr).
    from bsft_jax.models.builtin import resolve_model_path

    path = resolve_model_path(os.fspath(path))  # "builtin:<name>" -> its converted, cached folder
    dtype = canonical_dtype(dtype)
    files = checkpoint_files(path)
    config = DecoderConfig.from_hf(path, param_dtype=dtype, dtype=canonical_dtype(compute_dtype or dtype),
                                   **config_overrides)
    abstract = abstract_decoder(config)
    graphdef, abstract_state = nnx.split(abstract)
    flat_shardings = _target_shardings(abstract_state, mesh)
    flat_abstract = {p: v for p, v in nnx.to_flat_state(abstract_state)}
    targets = {p: v.get_value() for p, v in flat_abstract.items()}
    values, seen = _read_weights(files, config, targets, flat_shardings, np.dtype(jnp.dtype(dtype)))
    missing = sorted(set(expected_hf_keys(config)) - seen)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise WeightLoadError(f"{path}: checkpoint is missing tensor(s) {missing[:5]}{more}")
    state = nnx.from_flat_state([(p, flat_abstract[p].replace(values[p])) for p in flat_abstract])
    model = nnx.merge(graphdef, state)
    return model, config


def _target_shardings(abstract_state: nnx.State, mesh: Mesh | None) -> dict[tuple, jax.sharding.Sharding]:
    """Each parameter path's sharding: from the rules table on ``mesh``, else the first device."""
    if mesh is not None:
        shardings = state_shardings(abstract_state, mesh)
    else:
        device = jax.devices()[0]
        shardings = jax.tree.map(lambda v: v.replace(SingleDeviceSharding(device)), abstract_state,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
    return {p: v.get_value() for p, v in nnx.to_flat_state(shardings)}


def _read_weights(files: list[str], config: DecoderConfig, targets: dict[tuple, Any],
                  shardings: dict[tuple, jax.sharding.Sharding], np_dtype: np.dtype
                  ) -> tuple[dict[tuple, jax.Array], set[str]]:
    """Streams every tensor of ``files`` onto its device(s): ``(arrays by NNX path, HF keys read)``.

    ``targets``: the abstract parameters (shape, dtype) by NNX path; stacked ones are filled layer by layer.
    """
    table = weight_table(config)
    values: dict[tuple, jax.Array] = {}
    seen: set[str] = set()
    for file in files:
        for key, hf_arr in safetensors_io.iter_tensors(file):
            found = _checked_rule(table, config, file, key, tuple(hf_arr.shape), seen)
            if found is None:
                continue
            rule, layer = found
            target = targets[rule.nnx_path]
            layer_shape = target.shape[1:] if rule.per_layer else target.shape
            arr = rule.layout.to_nnx(np.asarray(hf_arr), layer_shape).astype(np_dtype, copy=False)
            sharding = shardings[rule.nnx_path]
            if rule.per_layer:
                if rule.nnx_path not in values:
                    values[rule.nnx_path] = _zeros(target.shape, np_dtype, sharding)
                layer_arr = _to_device(arr, _drop_leading_axis(sharding))
                values[rule.nnx_path] = _set_layer(values[rule.nnx_path], layer_arr, jnp.int32(layer))
            else:
                values[rule.nnx_path] = _to_device(arr, sharding)
            del arr
    return values, seen


def _checked_rule(table: list[WeightRule], config: DecoderConfig, file: str, key: str, shape: tuple[int, ...],
                  seen: set[str]) -> tuple[WeightRule, int | None] | None:
    """The table rule and layer of tensor ``key`` (added to ``seen``), or None for a tensor to skip.

    Raises naming the file and tensor for an unexpected name, a layer past ``num_hidden_layers``, a
    shape other than the table's and a tensor seen twice.
    """
    if _IGNORED_HF_KEYS.match(key):
        return None
    found = match_rule(table, key)
    if found is None:
        if key == "lm_head.weight" and config.tie_word_embeddings:
            log.warning("%s: ignoring lm_head.weight (tie_word_embeddings=true)", file)
            return None
        raise WeightLoadError(f"{file}: unexpected tensor {key!r} for a {config.model_type} model")
    rule, layer = found
    if layer is not None and layer >= config.num_layers:
        raise WeightLoadError(f"{file}: tensor {key!r} is for layer {layer} but num_hidden_layers="
                              f"{config.num_layers}")
    if shape != rule.hf_shape:
        raise WeightLoadError(f"{file}: tensor {key!r} has shape {shape}, expected {rule.hf_shape} from config.json")
    if key in seen:
        raise WeightLoadError(f"{file}: tensor {key!r} appears twice in the checkpoint")
    seen.add(key)
    return found
