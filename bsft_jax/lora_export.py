"""Export of a LoRA run: a merged HF folder (default) or an HF PEFT adapter (``--adapter``).

Both read the step's trainable state (adapters + behavior rows) into host numpy arrays and rebuild
the frozen base from the checkpoint's base reference (:func:`bsft_jax.lora_run.rebuild_base`, hash
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
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from bsft_jax.checkpoint import checkpoint_dir, decoder_config_from_dict
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.lora import LoraConfig, lora_config_from, merged_weight, projection_owner

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


def _flat(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k): v})
    return out


def read_trainable(run_dir: str, step: int, abstract: dict[str, Any]) -> dict[tuple[str, ...], np.ndarray]:
    """The step's ``params`` item (adapters + rows) as host numpy arrays, whatever mesh saved them."""
    from bsft_jax.export import restore_tree_on_host

    return restore_tree_on_host(os.path.join(checkpoint_dir(run_dir), str(step), "params"), abstract)


def load_lora_step(run_dir: str, step: int, meta: dict[str, Any], cfg: Any) -> tuple[Any, LoraConfig, dict]:
    """``(base bundle on the host, LoraConfig, trainable arrays)`` of a LoRA checkpoint step."""
    from bsft_jax.lora_run import rebuild_base
    from bsft_jax.lora_trainer import LoraTrainer

    lora = lora_config_from(meta["lora"]["config"])
    mesh = Mesh(np.asarray(jax.devices("cpu")[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    with jax.set_mesh(mesh):
        bundle = rebuild_base(cfg, meta["lora"], mesh, f"{checkpoint_dir(run_dir)}/{step}")
        trainer = LoraTrainer(bundle.model, _no_tx(), lambda s: 0.0, mesh, lora=lora,
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
    from bsft_jax.checkpoint import Checkpointer
    from bsft_jax.config_schema import config_from_dict
    from bsft_jax.models.hf import save_hf

    reader = Checkpointer.__new__(Checkpointer)
    reader.manager = ocp.CheckpointManager(checkpoint_dir(run_dir), options=ocp.CheckpointManagerOptions(
        read_only=True, create=False))
    cfg = config_from_dict(reader.read_json(step, "config"))
    bundle, lora, trainable = load_lora_step(run_dir, step, meta, cfg)
    config = decoder_config_from_dict(meta["model_config"])
    if adapter:
        return write_adapter(out, config, lora, trainable, meta["lora"], tokenizer, dtype, overwrite)
    model = merged_model(bundle, lora, trainable, meta["lora"]["row_ids"], dtype)
    return save_hf(model, config, out, tokenizer=tokenizer, dtype=dtype, max_shard_size=max_shard_size,
                   overwrite=overwrite)


def load_merged(run_dir: str, meta: dict[str, Any], *, mesh: Mesh | None = None,
                **runtime: Any) -> tuple[Any, DecoderConfig, dict[str, Any]]:
    """A LoRA checkpoint as a plain (merged) Decoder, for evaluation and decoding: ``(model, config, meta)``.

    What :func:`bsft_jax.checkpoint.load_params` returns for LoRA runs: the base is rebuilt and
    checked, the adapters merged on the host in ``model.param_dtype`` (fp32 products), and the
    parameters placed by the rules table on ``mesh`` (default: the first device).
    """
    from bsft_jax.checkpoint import Checkpointer
    from bsft_jax.config_schema import config_from_dict
    from bsft_jax.models.decoder import abstract_decoder
    from bsft_jax.sharding import state_shardings

    step = int(meta["step"])
    reader = Checkpointer.__new__(Checkpointer)
    reader.manager = ocp.CheckpointManager(checkpoint_dir(run_dir), options=ocp.CheckpointManagerOptions(
        read_only=True, create=False))
    cfg = config_from_dict(reader.read_json(step, "config"))
    bundle, lora, trainable = load_lora_step(run_dir, step, meta, cfg)
    config = decoder_config_from_dict(meta["model_config"], **runtime)
    host = merged_model(bundle, lora, trainable, meta["lora"]["row_ids"], config.param_dtype)
    graphdef, abstract = nnx.split(abstract_decoder(config))
    if mesh is not None:
        shardings = nnx.to_pure_dict(state_shardings(abstract, mesh))
    else:
        single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: single, nnx.to_pure_dict(abstract))
    values = {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(host, nnx.Param))}
    flat_sh = _flat(shardings)

    def place(path: tuple[str, ...]) -> jax.Array:
        v = values[path]
        arr = np.stack([v[i] for i in range(v.shape[0])]) if isinstance(v, _MergedLayers) else np.asarray(v)
        return jax.device_put(arr.astype(config.param_dtype), flat_sh[path])

    state = jax.tree.map(lambda x: x, abstract)
    from bsft_jax.export import _unflatten

    nnx.replace_by_pure_dict(state, _unflatten({p: place(p) for p in flat_sh}))
    return nnx.merge(graphdef, state), config, meta
