"""Hugging Face <-> NNX weights: one declarative name table used in both directions.

Each row of :func:`weight_table` names an HF tensor (``{i}`` stands for the layer index), the
NNX parameter path it maps to, the layout change (transpose / head reshape only: our RoPE and
projections are HF-exact) and the HF shape, which is asserted on every tensor.

``load_hf`` streams one safetensors file at a time, one tensor at a time, straight into the
target shardings: peak host memory is about one tensor (one shard at worst) beyond the model.
``save_hf`` writes sharded safetensors, the index, ``config.json``, ``generation_config.json``
and the tokenizer, into a temporary folder that is renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from bsft_jax import storage
from bsft_jax.errors import UserError
from bsft_jax.files import replace_dir, write_json
from bsft_jax.models import safetensors_io
from bsft_jax.models.config import DecoderConfig, canonical_dtype
from bsft_jax.models.decoder import Decoder, abstract_decoder
from bsft_jax.models.sharding import state_shardings
from bsft_jax.units import parse_size

log = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
# Buffers some checkpoints carry that are recomputed here, not loaded.
_IGNORED_HF_KEYS = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


class WeightLoadError(UserError, ValueError):
    """A checkpoint's tensors do not match the architecture in its config.json."""


# ----------------------------------------------------------------------------- the table
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


def _match(table: list[WeightRule], key: str) -> tuple[WeightRule, int | None] | None:
    for rule in table:
        m = rule.pattern.match(key)
        if m:
            return rule, (int(m.group(1)) if rule.per_layer else None)
    return None


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
    from bsft_jax.models.builtin import resolve_model_path

    path = resolve_model_path(os.fspath(path))  # "builtin:<name>" -> its converted, cached folder
    dtype = canonical_dtype(dtype)
    files = checkpoint_files(path)
    config = DecoderConfig.from_hf(path, param_dtype=dtype, dtype=canonical_dtype(compute_dtype or dtype),
                                   **config_overrides)
    abstract = abstract_decoder(config)
    graphdef, abstract_state = nnx.split(abstract)
    if mesh is not None:
        shardings = state_shardings(abstract_state, mesh)
    else:
        device = jax.devices()[0]
        shardings = jax.tree.map(lambda v: v.replace(SingleDeviceSharding(device)), abstract_state,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
    flat_shardings = {p: v.get_value() for p, v in nnx.to_flat_state(shardings)}
    flat_abstract = {p: v for p, v in nnx.to_flat_state(abstract_state)}
    values: dict[tuple, jax.Array] = {}
    table = weight_table(config)
    expected = set(expected_hf_keys(config))
    seen: set[str] = set()
    np_dtype = np.dtype(jnp.dtype(dtype))
    for file in files:
        for key, hf_arr in safetensors_io.iter_tensors(file):
            if _IGNORED_HF_KEYS.match(key):
                continue
            found = _match(table, key)
            if found is None:
                if key == "lm_head.weight" and config.tie_word_embeddings:
                    log.warning("%s: ignoring lm_head.weight (tie_word_embeddings=true)", file)
                    continue
                raise WeightLoadError(f"{file}: unexpected tensor {key!r} for a {config.model_type} model")
            rule, layer = found
            if layer is not None and layer >= config.num_layers:
                raise WeightLoadError(f"{file}: tensor {key!r} is for layer {layer} but num_hidden_layers="
                                      f"{config.num_layers}")
            if tuple(hf_arr.shape) != rule.hf_shape:
                raise WeightLoadError(
                    f"{file}: tensor {key!r} has shape {tuple(hf_arr.shape)}, expected {rule.hf_shape} "
                    "from config.json"
                )
            if key in seen:
                raise WeightLoadError(f"{file}: tensor {key!r} appears twice in the checkpoint")
            seen.add(key)
            target = flat_abstract[rule.nnx_path].get_value()
            layer_shape = target.shape[1:] if rule.per_layer else target.shape
            arr = rule.layout.to_nnx(np.asarray(hf_arr), layer_shape).astype(np_dtype, copy=False)
            sharding = flat_shardings[rule.nnx_path]
            if rule.per_layer:
                if rule.nnx_path not in values:
                    values[rule.nnx_path] = _zeros(target.shape, np_dtype, sharding)
                layer_arr = _to_device(arr, _drop_leading_axis(sharding))
                values[rule.nnx_path] = _set_layer(values[rule.nnx_path], layer_arr, jnp.int32(layer))
            else:
                values[rule.nnx_path] = _to_device(arr, sharding)
            del arr
    missing = sorted(expected - seen)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise WeightLoadError(f"{path}: checkpoint is missing tensor(s) {missing[:5]}{more}")
    state = nnx.from_flat_state([(p, flat_abstract[p].replace(values[p])) for p in flat_abstract])
    model = nnx.merge(graphdef, state)
    return model, config


# ----------------------------------------------------------------------------- saving
def _to_host(x: jax.Array) -> np.ndarray:
    """Fetches a (possibly multi-host sharded) array to host memory on every process."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

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
    from huggingface_hub import split_state_dict_into_shards_factory

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
    template = getattr(tokenizer, "chat_template", None)
    if not template or not isinstance(template, str):
        return
    tc_path = os.path.join(path, "tokenizer_config.json")
    with open(tc_path) as f:
        tc = json.load(f)
    if tc.get("chat_template") != template:
        tc["chat_template"] = template
        with open(tc_path, "w") as f:
            json.dump(tc, f, indent=2, ensure_ascii=False)
    with open(os.path.join(path, "chat_template.jinja"), "w") as f:
        f.write(template)


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
    tmp = None
    if writer:  # a staging sibling: a local folder, or a prefix in the same bucket
        tmp = storage.temp_sibling(path)
    try:
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
            replace_dir(tmp, path)
            tmp = None
    finally:
        if tmp is not None:
            storage.remove(tmp)
    return path

