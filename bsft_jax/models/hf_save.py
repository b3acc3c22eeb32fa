"""Saving a decoder as a Hugging Face folder: sharded safetensors, index, configs and tokenizer.

``save_hf`` writes sharded safetensors (``huggingface_hub``'s grouping, as ``save_pretrained``),
the index, ``config.json``, ``generation_config.json`` and the tokenizer, into a temporary folder
that is renamed into place only when complete. Tensor names and layouts come from the one table
in :mod:`bsft_jax.models.hf_table`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from huggingface_hub import split_state_dict_into_shards_factory
from jax.experimental import multihost_utils

from bsft_jax import storage
from bsft_jax.files import staged_dir, write_json
from bsft_jax.models import safetensors_io
from bsft_jax.models.config import DecoderConfig, canonical_dtype
from bsft_jax.models.decoder import Decoder
from bsft_jax.models.hf_table import SAFETENSORS_INDEX, weight_table
from bsft_jax.units import parse_size


def _to_host(x: jax.Array) -> np.ndarray:
    """Fetches a (possibly multi-host sharded) array to host memory on every process."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _param_arrays(model: Decoder) -> dict[tuple, jax.Array]:
    return {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def iter_hf_tensors(model: Decoder, config: DecoderConfig, dtype: str | None = None
                    ) -> Iterator[safetensors_io.PendingTensor]:
    """The HF tensors of ``model`` as lazily produced (name, shape, dtype) entries, table order."""
    np_dtype = np.dtype(jnp.dtype(canonical_dtype(dtype or config.source_dtype)))
    params = _param_arrays(model)
    for rule in weight_table(config):
        arr = params[rule.nnx_path]
        for i in range(config.num_layers) if rule.per_layer else (None,):
            name = rule.hf_key.format(i=i) if rule.per_layer else rule.hf_key

            def produce(arr=arr, i=i, rule=rule) -> np.ndarray:
                host = _to_host(arr[i] if i is not None else arr)
                return rule.layout.to_hf(host, rule.hf_shape).astype(np_dtype)

            yield safetensors_io.PendingTensor(name, rule.hf_shape, np_dtype, produce)


def _shard_plan(tensors: list[safetensors_io.PendingTensor], max_shard_bytes: int
                ) -> list[list[safetensors_io.PendingTensor]]:
    """Groups tensors into shards of at most ``max_shard_bytes`` (a bigger tensor gets its own), by
    ``huggingface_hub``'s splitter: the same grouping ``save_pretrained`` makes."""
    by_name = {t.name: t for t in tensors}
    split = split_state_dict_into_shards_factory(by_name, get_storage_size=lambda t: t.nbytes,
                                                 filename_pattern="model{suffix}.safetensors",
                                                 max_shard_size=max_shard_bytes)
    return [[by_name[n] for n in names] for names in split.filename_to_tensors.values()]


def generation_config_dict(config: DecoderConfig) -> dict[str, Any]:
    """``generation_config.json``: the source model's EOS ids, so servers stop where it did."""
    gen: dict[str, Any] = {"_from_model_config": False}
    if config.bos_token_id is not None:
        gen["bos_token_id"] = config.bos_token_id
    stops = list(config.stop_token_ids)
    if stops:
        gen["eos_token_id"] = stops if len(stops) > 1 else stops[0]
    if config.pad_token_id is not None:
        gen["pad_token_id"] = config.pad_token_id
    return gen


def save_tokenizer(tokenizer: Any, path: str) -> None:
    """Saves an HF tokenizer with its chat template in both tokenizer_config.json and chat_template.jinja.

    A URL ``path`` (``gs://...``): written to a local temporary folder, then uploaded file by file.
    """
    if storage.is_url(path):
        with tempfile.TemporaryDirectory(prefix="bsft_tokenizer_") as local:
            save_tokenizer(tokenizer, local)
            storage.upload_dir(local, path)
        return
    tokenizer.save_pretrained(path)
    tc_path = os.path.join(path, "tokenizer_config.json")
    with open(tc_path) as f:
        tc = json.load(f)
    changed = _list_added_tokens(path, tc)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template and tc.get("chat_template") != template:
        tc["chat_template"] = template
        changed = True
    if changed:
        with open(tc_path, "w") as f:
            json.dump(tc, f, indent=2, ensure_ascii=False)
    if isinstance(template, str) and template:
        with open(os.path.join(path, "chat_template.jinja"), "w") as f:
            f.write(template)


def _list_added_tokens(path: str, tc: dict[str, Any]) -> bool:
    """Copies tokenizer.json's added tokens into tokenizer_config.json's ``added_tokens_decoder`` (if empty).

    transformers 5 writes them only to tokenizer.json, but a model-specific class that
    ``AutoTokenizer`` picks from config.json's model_type (``Qwen2Tokenizer`` for qwen2) rebuilds
    the tokenizer from the vocabulary and re-adds only the tokens listed here: without them
    ``<|im_start|>`` (and every behavior token) would be split into pieces after a reload.
    """
    tj_path = os.path.join(path, "tokenizer.json")
    if tc.get("added_tokens_decoder") or not os.path.isfile(tj_path):
        return False
    with open(tj_path, encoding="utf-8") as f:
        added = json.load(f).get("added_tokens", [])
    if not added:
        return False
    tc["added_tokens_decoder"] = {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added}
    return True


def save_hf(
    model: Decoder,
    config: DecoderConfig,
    path: str | os.PathLike,
    *,
    tokenizer: Any = None,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> str:
    """Writes ``model`` as an HF folder transformers and vLLM load offline.

    Contents: ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``,
    ``config.json`` (real vocab size, tie flag, dtype), ``generation_config.json`` (the source
    model's EOS ids) and, if given, the tokenizer with its chat template. Everything is written
    to a temporary sibling folder first and renamed into place, so a crash never leaves a folder
    that looks complete. Refuses a non-empty ``path`` unless ``overwrite``.

    Multi-host: call on every process (parameters are gathered collectively); process 0 writes.
    """
    path = storage.abspath(path)
    dtype = canonical_dtype(dtype or config.source_dtype)
    writer = jax.process_index() == 0
    if storage.exists(path) and (not storage.isdir(path) or storage.listdir(path)) and not overwrite:
        raise FileExistsError(f"{path}: exists and is not empty; pass overwrite=True (or --overwrite) to replace it")
    tensors = list(iter_hf_tensors(model, config, dtype))
    shards = _shard_plan(tensors, parse_size(max_shard_size))
    # process 0 writes into a staging sibling (a local folder, or a prefix in the same bucket)
    with staged_dir(path) if writer else contextlib.nullcontext() as tmp:
        weight_map: dict[str, str] = {}
        total = 0
        for k, shard in enumerate(shards, start=1):
            fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            if writer:
                safetensors_io.write_file(storage.join(tmp, fname), shard, {"format": "pt"})
            else:
                for t in shard:  # take part in the collective gathers
                    t.produce()
            for t in shard:
                weight_map[t.name] = fname
                total += t.nbytes
        if writer:
            write_json(storage.join(tmp, SAFETENSORS_INDEX),
                        {"metadata": {"total_size": total}, "weight_map": weight_map})
            write_json(storage.join(tmp, "config.json"), config.to_hf(dtype=dtype))
            write_json(storage.join(tmp, "generation_config.json"), generation_config_dict(config))
            if tokenizer is not None:
                save_tokenizer(tokenizer, tmp)
    return path
