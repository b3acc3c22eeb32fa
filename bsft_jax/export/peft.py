"""A LoRA step as an HF PEFT adapter folder (``python -m bsft_jax.export --adapter``).

``adapter_config.json`` + ``adapter_model.safetensors`` in PEFT's LoRA format, with the behavior rows
as PEFT trainable tokens (``trainable_token_indices``: ``embed_tokens``, and ``lm_head`` for an untied
head), plus the run's tokenizer. Load it with ``base.resize_token_embeddings(len(tokenizer))`` (rows
the adapter does not carry are never produced by the tokenizer) and
``peft.PeftModel.from_pretrained(base, folder)``.

Written like :func:`bsft_jax.models.hf.save_hf` (:func:`bsft_jax.files.staged_dir`): into a staging
sibling (a local folder, or a prefix of the same bucket), then moved into place whole, so a crash never
leaves a folder that looks complete.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from bsft_jax import storage
from bsft_jax.checkpoint.host import LoraStep
from bsft_jax.files import staged_dir, write_json
from bsft_jax.models import safetensors_io
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.hf import save_tokenizer
from bsft_jax.models.lora import LoraConfig, projection_owner

_HF_MODULE = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


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


def write_adapter(out: str, config: DecoderConfig, step: LoraStep, meta_lora: dict[str, Any], tokenizer: Any,
                  dtype: str, overwrite: bool = False) -> str:
    """Writes the PEFT adapter folder ``out`` (local or ``gs://``; staged, then moved into place); returns its path.

    Refuses a non-empty ``out`` unless ``overwrite`` (the old folder is removed only after the new one is complete).
    """
    out = storage.abspath(out)
    if storage.exists(out) and (not storage.isdir(out) or storage.listdir(out)) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    np_dtype = np.dtype(jax.numpy.dtype(dtype))
    tensors = [safetensors_io.PendingTensor(name, tuple(arr.shape), np_dtype, lambda arr=arr: arr.astype(np_dtype))
               for name, arr in adapter_tensors(config, step.lora, step.trainable).items()]
    with staged_dir(out) as tmp:
        safetensors_io.write_file(storage.join(tmp, ADAPTER_WEIGHTS), tensors, {"format": "pt"})
        write_json(storage.join(tmp, ADAPTER_CONFIG),
                   adapter_config(config, step.lora, meta_lora["row_ids"], meta_lora["base"].get("path", "")))
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
    return out
