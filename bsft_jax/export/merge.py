"""A LoRA step merged on the host: ``W + (alpha / r) A B`` for each targeted projection, behavior rows
scattered into the embedding (and untied head).

The merge is lazy per layer (:class:`MergedLayers`): the HF writer asks for one layer's tensor at a
time, so peak host memory is the base plus one layer's merged weight (fp32 product, cast to the
export dtype). :func:`load_merged` places the merged model on devices instead, for evaluation and
decoding (:func:`bsft_jax.run.checkpoint.load_params` of a LoRA run).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import Mesh

from bsft_jax.export.read import LoraStep, load_lora_step, run_settings
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import Decoder, abstract_decoder
from bsft_jax.models.lora import merged_weight, projection_owner
from bsft_jax.models.sharding import state_shardings
from bsft_jax.run.checkpoint import decoder_config_from_dict


class MergedLayers:
    """A stacked projection whose layer ``i`` is merged only when the HF writer asks for it."""

    def __init__(self, w: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float, dtype: Any):
        self.w, self.a, self.b, self.scale, self.dtype = w, a, b, scale, np.dtype(dtype)
        self.shape = w.shape

    def __getitem__(self, i: int) -> np.ndarray:
        return merged_weight(self.w[i], self.a[i], self.b[i], self.scale, self.dtype)


def merged_model(step: LoraStep, row_ids: list[int], dtype: str) -> Decoder:
    """The base Decoder with host arrays: rows scattered in, targeted projections lazily merged per layer."""
    model, lora, trainable, ids = step.bundle.model, step.lora, step.trainable, np.asarray(row_ids)
    params = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    embed = params[("embed",)].copy()
    embed[ids] = trainable[("rows", "embed")].astype(embed.dtype)
    params[("embed",)] = embed
    if ("rows", "lm_head") in trainable:
        head = params[("lm_head",)].copy()
        head[:, ids] = trainable[("rows", "lm_head")].astype(head.dtype)
        params[("lm_head",)] = head
    for name in lora.targets:
        owner = projection_owner(name)
        a = trainable[("lora", "layers", owner, f"{name}_lora_a")]
        b = trainable[("lora", "layers", owner, f"{name}_lora_b")]
        key = ("layers", owner, f"{name}_proj")
        params[key] = MergedLayers(params[key], a, b, lora.scale, np.dtype(jax.numpy.dtype(dtype)))
    graphdef, state = nnx.split(model)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        if path in params:
            var.set_value(params[path]) if hasattr(var, "set_value") else setattr(var, "value", params[path])
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_merged(run_dir: str, meta: dict[str, Any], *, mesh: Mesh | None = None,
                **runtime: Any) -> tuple[Decoder, DecoderConfig, dict[str, Any]]:
    """A LoRA checkpoint as a plain (merged) Decoder, for evaluation and decoding: ``(model, config, meta)``.

    What :func:`bsft_jax.run.checkpoint.load_params` returns for LoRA runs: the base is rebuilt and
    checked, the adapters merged on the host in ``model.param_dtype`` (fp32 products), and the
    parameters placed by the rules table on ``mesh`` (default: the first device).
    """
    step = int(meta["step"])
    loaded = load_lora_step(run_dir, step, meta, run_settings(run_dir, step))
    config = decoder_config_from_dict(meta["model_config"], **runtime)
    host = merged_model(loaded, meta["lora"]["row_ids"], config.param_dtype)
    graphdef, abstract = nnx.split(abstract_decoder(config))
    if mesh is not None:
        shardings = nnx.to_pure_dict(state_shardings(abstract, mesh))
    else:
        single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: single, nnx.to_pure_dict(abstract))
    values = {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(host, nnx.Param))}
    flat_sh = traverse_util.flatten_dict(shardings)

    def place(path: tuple[str, ...]) -> jax.Array:
        v = values[path]
        arr = np.stack([v[i] for i in range(v.shape[0])]) if isinstance(v, MergedLayers) else np.asarray(v)
        return jax.device_put(arr.astype(config.param_dtype), flat_sh[path])

    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict({p: place(p) for p in flat_sh}))
    return nnx.merge(graphdef, state), config, meta
