"""A checkpoint step's arrays read onto the host, and a LoRA step merged there.

* :func:`restore_tree_on_host`: every array of an Orbax item as host numpy, one array at a time
  (whatever mesh wrote it; Orbax gathers the shards).
* :func:`load_lora_step`: a LoRA step (its meta has ``lora``): the trainable arrays (adapters +
  behavior rows, shaped by :func:`bsft_jax.checkpoint.lora_base.trainable_shapes`) and the frozen base, rebuilt
  on the host CPU as the checkpoint's base reference says (hash checked).
* :func:`merged_model`: ``W + (alpha / r) A B`` for each targeted projection, behavior rows scattered
  into the embedding (and untied head). The merge is lazy per layer (:class:`MergedLayers`): the HF
  writer asks for one layer's tensor at a time, so peak host memory is the base plus one layer's merged
  weight (fp32 product, cast to the export dtype).
* :func:`load_merged`: the merged model placed on devices instead, for evaluation and decoding
  (:func:`bsft_jax.checkpoint.read.load_params` of a LoRA run).

Export (:mod:`bsft_jax.export`) and evaluation read LoRA steps through here; this module imports
neither them nor train/ (the trainable tree's shapes come from :mod:`bsft_jax.checkpoint.lora_base`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util
from jax.sharding import Mesh

from bsft_jax import storage
from bsft_jax.checkpoint.layout import CheckpointError, checkpoint_dir, decoder_config_from_dict
from bsft_jax.checkpoint.lora_base import rebuild_base, trainable_shapes
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import Decoder, abstract_decoder
from bsft_jax.models.lora import LoraConfig, lora_config_from, merged_weight, projection_owner
from bsft_jax.models.sharding import make_mesh, state_shardings
from bsft_jax.setup.model_setup import ModelBundle
from bsft_jax.setup.settings import Settings


class LoraStep(NamedTuple):
    """A LoRA step on the host: the rebuilt base, its LoraConfig, the trainable arrays."""

    bundle: ModelBundle
    lora: LoraConfig
    trainable: dict[tuple[str, ...], np.ndarray]


# ----------------------------------------------------------------------------- arrays on the host
def params_dir(run_dir: str, step: int) -> str:
    """``RUN_DIR/checkpoints/<step>/params``: the Orbax item of a step's (trainable) parameters."""
    return storage.join(checkpoint_dir(run_dir), str(step), "params")


def restore_tree_on_host(item_dir: str, abstract: Any) -> dict[tuple[str, ...], np.ndarray]:
    """Every array of an Orbax item as host numpy (``{key path: array}``), one array at a time.

    ``abstract``: nested dict of ShapeDtypeStructs (the expected shapes; ``dtype`` casts while reading).
    """
    checkpointer = ocp.PyTreeCheckpointer()
    values: dict[tuple[str, ...], np.ndarray] = {}
    for path, target in traverse_util.flatten_dict(abstract).items():
        keys = tuple(map(str, path))
        restore_as = ocp.RestoreArgs(restore_type=np.ndarray, dtype=target.dtype)
        args = ocp.args.PyTreeRestore(item=traverse_util.unflatten_dict({keys: target}), partial_restore=True,
                                      restore_args=traverse_util.unflatten_dict({keys: restore_as}))
        restored = checkpointer.restore(item_dir, args=args)
        for k in keys:
            restored = restored[k]
        if tuple(restored.shape) != tuple(target.shape):
            raise CheckpointError(f"{item_dir}: parameter {'/'.join(keys)} has shape {tuple(restored.shape)} but "
                                  f"meta/model_config implies {tuple(target.shape)}")
        values[keys] = restored
    return values


# ----------------------------------------------------------------------------- LoRA steps
def load_lora_step(run_dir: str, step: int, meta: dict[str, Any], settings: Settings) -> LoraStep:
    """The base rebuilt on the host CPU (hash checked), the LoraConfig and the trainable arrays of a LoRA step.

    ``settings``: the run's settings, from the config saved with the step
    (:func:`bsft_jax.export.read.run_settings`).
    """
    lora = lora_config_from(meta["lora"]["config"])
    mesh = make_mesh((1, 1, 1), devices=jax.devices("cpu")[:1])
    with jax.set_mesh(mesh):
        bundle = rebuild_base(settings, meta["lora"], mesh, f"{checkpoint_dir(run_dir)}/{step}")
    shapes = trainable_shapes(bundle.config, lora, meta["lora"]["row_ids"])
    return LoraStep(bundle, lora, restore_tree_on_host(params_dir(run_dir, step), shapes))


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


def load_merged(run_dir: str, meta: dict[str, Any], settings: Settings, *, mesh: Mesh | None = None,
                **runtime: Any) -> tuple[Decoder, DecoderConfig, dict[str, Any]]:
    """A LoRA checkpoint as a plain (merged) Decoder, for evaluation and decoding: ``(model, config, meta)``.

    What :func:`bsft_jax.checkpoint.read.load_params` returns for LoRA runs: the base is rebuilt from
    ``settings`` (the run's, saved with the step) and checked, the adapters merged on the host in
    ``model.param_dtype`` (fp32 products), and the parameters placed by the rules table on ``mesh``
    (default: the first device).
    """
    loaded = load_lora_step(run_dir, int(meta["step"]), meta, settings)
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
