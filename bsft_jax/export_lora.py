"""Export of a LoRA run: a merged HF folder (default) or an HF PEFT adapter (``--adapter``).

Both read the step's trainable state (adapters + behavior rows) into host numpy arrays and rebuild
the frozen base from the checkpoint's base reference (:func:`bsft_jax.run.lora.rebuild_base`, hash
checked), on the host CPU.

* **merged**: ``W + (alpha / r) A B`` for each targeted projection, computed per layer as the
  writer asks for that layer's tensor (fp32 product, cast to the export dtype), behavior rows
  scattered into the embedding (and untied head); then the ordinary :func:`bsft_jax.models.hf.save_hf`
  folder. Peak host memory: the base plus one layer's merged weight.
* **adapter**: ``adapter_config.json`` + ``adapter_model.safetensors`` in PEFT's LoRA format, with
  the behavior rows as PEFT trainable tokens (``trainable_token_indices``: ``embed_tokens``, and
  ``lm_head`` for an untied head), plus the run's tokenizer. Load it with
  ``base.resize_token_embeddings(len(tokenizer))`` (rows the adapter does not carry are never
  produced by the tokenizer) and ``peft.PeftModel.from_pretrained(base, folder)``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import Mesh

from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.lora import LoraConfig, lora_config_from, merged_weight, projection_owner
from bsft_jax.run.checkpoint import checkpoint_dir, decoder_config_from_dict

log = logging.getLogger("bsft_jax.export")

_HF_MODULE = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


class _MergedLayers:
    """A stacked projection whose layer ``i`` is merged only when the HF writer asks for it."""

    def __init__(self, w: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float, dtype: Any):
        self.w, self.a, self.b, self.scale, self.dtype = w, a, b, scale, np.dtype(dtype)
        self.shape = w.shape

    def __getitem__(self, i: int) -> np.ndarray:
        return merged_weight(self.w[i], self.a[i], self.b[i], self.scale, self.dtype)


def run_settings(run_dir: str, step: int) -> Any:
    """The typed settings (:class:`bsft_jax.run.settings.Settings`) of the config saved with a step."""
    from bsft_jax.run.checkpoint import _open_read_only
    from bsft_jax.run.config import config_from_dict
    from bsft_jax.run.settings import Settings

    return Settings.from_config(config_from_dict(_open_read_only(run_dir).read_json(step, "config")))


def read_trainable(run_dir: str, step: int, abstract: dict[str, Any]) -> dict[tuple[str, ...], np.ndarray]:
    """The step's ``params`` item (adapters + rows) as host numpy arrays, whatever mesh saved them."""
    from bsft_jax.export import restore_tree_on_host

    return restore_tree_on_host(os.path.join(checkpoint_dir(run_dir), str(step), "params"), abstract)


def load_lora_step(run_dir: str, step: int, meta: dict[str, Any], settings: Any) -> tuple[Any, LoraConfig, dict]:
    """``(base bundle on the host, LoraConfig, trainable arrays)`` of a LoRA checkpoint step.

    ``settings``: the run's :class:`~bsft_jax.run.settings.Settings` (:func:`run_settings`).
    """
    from bsft_jax.run.lora import rebuild_base
    from bsft_jax.train.lora import LoraTrainer

    lora = lora_config_from(meta["lora"]["config"])
    mesh = Mesh(np.asarray(jax.devices("cpu")[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    with jax.set_mesh(mesh):
        bundle = rebuild_base(settings, meta["lora"], mesh, f"{checkpoint_dir(run_dir)}/{step}")
        trainer = LoraTrainer(bundle.config, _no_tx(), lambda s: 0.0, mesh, lora=lora,
                              behavior_ids=meta["lora"]["row_ids"])
    return bundle, lora, read_trainable(run_dir, step, trainer.abstract_state.params)


def _no_tx() -> Any:
    import optax

    return optax.identity()


def merged_model(bundle: Any, lora: LoraConfig, trainable: dict[tuple[str, ...], np.ndarray], row_ids: list[int],
                 dtype: str) -> Any:
    """The base Decoder with host arrays: rows scattered in, targeted projections lazily merged per layer."""
    model, ids = bundle.model, np.asarray(row_ids)
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
        params[key] = _MergedLayers(params[key], a, b, lora.scale, np.dtype(jax.numpy.dtype(dtype)))
    graphdef, state = nnx.split(model)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        if path in params:
            var.set_value(params[path]) if hasattr(var, "set_value") else setattr(var, "value", params[path])
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def adapter_tensors(config: DecoderConfig, lora: LoraConfig, trainable: dict[tuple[str, ...], np.ndarray]
                    ) -> dict[str, np.ndarray]:
    """PEFT's tensor names -> arrays (torch Linear layout: lora_A [r, in], lora_B [out, r])."""
    out: dict[str, np.ndarray] = {}
    r = lora.rank
    for name in lora.targets:
        owner = projection_owner(name)
        a = trainable[("lora", "layers", owner, f"{name}_lora_a")]
        b = trainable[("lora", "layers", owner, f"{name}_lora_b")]
        for i in range(config.num_layers):
            prefix = f"base_model.model.model.layers.{i}.{_HF_MODULE[name]}"
            out[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i].reshape(-1, r).T)
            out[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].reshape(r, -1).T)
    out["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"] = trainable[("rows", "embed")]
    if ("rows", "lm_head") in trainable:
        out["base_model.model.lm_head.token_adapter.trainable_tokens_delta"] = np.ascontiguousarray(
            trainable[("rows", "lm_head")].T)
    return out


def adapter_config(config: DecoderConfig, lora: LoraConfig, row_ids: list[int], base_path: str) -> dict[str, Any]:
    """``adapter_config.json`` (PEFT LoRA, CAUSAL_LM, trainable behavior-token rows)."""
    ids = [int(i) for i in row_ids]
    tokens = {"embed_tokens": ids} if config.tie_word_embeddings else {"embed_tokens": ids, "lm_head": ids}
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_path or None,
            "r": int(lora.rank), "lora_alpha": float(lora.alpha), "lora_dropout": float(lora.dropout),
            "target_modules": sorted(_HF_MODULE[t].split(".")[-1] for t in lora.targets), "bias": "none",
            "use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "inference_mode": True,
            "init_lora_weights": True, "modules_to_save": None, "trainable_token_indices": tokens}


def write_adapter(out: str, config: DecoderConfig, lora: LoraConfig, trainable: dict[tuple[str, ...], np.ndarray],
                  meta_lora: dict[str, Any], tokenizer: Any, dtype: str, overwrite: bool = False) -> str:
    """Writes the PEFT adapter folder (temp folder, then rename); returns its absolute path."""
    from safetensors.numpy import save_file

    from bsft_jax.models.hf import save_tokenizer

    np_dtype = np.dtype(jax.numpy.dtype(dtype))
    tensors = {k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in adapter_tensors(config, lora, trainable).items()}
    cfg_json = adapter_config(config, lora, meta_lora["row_ids"], meta_lora["base"].get("path", ""))
    out = os.path.abspath(out)
    tmp = out + ".tmp-adapter"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
    if tokenizer is not None:
        save_tokenizer(tokenizer, tmp)
    if os.path.exists(out):
        if not overwrite and os.listdir(out):
            raise FileExistsError(f"{out}: exists and is not empty; pass --overwrite")
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def export_lora(run_dir: str, step: int, meta: dict[str, Any], out: str, *, tokenizer: Any, dtype: str,
                adapter: bool, max_shard_size: int | str = "5GB", overwrite: bool = False) -> str:
    """Exports a LoRA checkpoint step as a merged HF folder, or a PEFT adapter with ``adapter=True``."""
    loaded = load_lora_step(run_dir, step, meta, run_settings(run_dir, step))
    return write_lora_export(loaded, meta, out, step=step, tokenizer=tokenizer, dtype=dtype, adapter=adapter,
                             max_shard_size=max_shard_size, overwrite=overwrite)


def write_lora_export(loaded: tuple[Any, LoraConfig, dict], meta: dict[str, Any], out: str, *, step: int,
                      tokenizer: Any, dtype: str, adapter: bool, max_shard_size: int | str = "5GB",
                      overwrite: bool = False) -> str:
    """Writes what :func:`load_lora_step` read: the merged HF folder, or the PEFT adapter (``adapter=True``)."""
    from bsft_jax.models.hf import save_hf

    t0 = time.perf_counter()
    bundle, lora, trainable = loaded
    config = decoder_config_from_dict(meta["model_config"])
    if adapter:
        path = write_adapter(out, config, lora, trainable, meta["lora"], tokenizer, dtype, overwrite)
    else:
        model = merged_model(bundle, lora, trainable, meta["lora"]["row_ids"], dtype)
        path = save_hf(model, config, out, tokenizer=tokenizer, dtype=dtype, max_shard_size=max_shard_size,
                       overwrite=overwrite)
    log.info("wrote %s (LoRA %s, %s, step %d) in %.1fs", path, "adapter" if adapter else "merged", dtype, step,
             time.perf_counter() - t0)
    return path


def load_merged(run_dir: str, meta: dict[str, Any], *, mesh: Mesh | None = None,
                **runtime: Any) -> tuple[Any, DecoderConfig, dict[str, Any]]:
    """A LoRA checkpoint as a plain (merged) Decoder, for evaluation and decoding: ``(model, config, meta)``.

    What :func:`bsft_jax.run.checkpoint.load_params` returns for LoRA runs: the base is rebuilt and
    checked, the adapters merged on the host in ``model.param_dtype`` (fp32 products), and the
    parameters placed by the rules table on ``mesh`` (default: the first device).
    """
    from bsft_jax.models.decoder import abstract_decoder
    from bsft_jax.models.sharding import state_shardings

    step = int(meta["step"])
    bundle, lora, trainable = load_lora_step(run_dir, step, meta, run_settings(run_dir, step))
    config = decoder_config_from_dict(meta["model_config"], **runtime)
    host = merged_model(bundle, lora, trainable, meta["lora"]["row_ids"], config.param_dtype)
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
        arr = np.stack([v[i] for i in range(v.shape[0])]) if isinstance(v, _MergedLayers) else np.asarray(v)
        return jax.device_put(arr.astype(config.param_dtype), flat_sh[path])

    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict({p: place(p) for p in flat_sh}))
    return nnx.merge(graphdef, state), config, meta
