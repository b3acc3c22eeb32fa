"""The on-disk format of a run: its folders, the ``meta`` item of a step, the DecoderConfig as JSON.

Run-directory layout (what ``python -m bsft_jax.export`` and the evaluator read)::

    RUN_DIR/
      config.json            resolved config of the latest start (process 0)
      model_config.json      DecoderConfig of the trained model, as in meta/model_config below
      tokenizer/             the base tokenizer extended with the behavior tokens (save_pretrained),
                             chat template included; the same for every step of the run
      startup.json           startup report (params, mesh, compile time, memory per device)
      metrics.jsonl          one JSON object per logged step / evaluation
      tensorboard/           TensorBoard event files
      checkpoints/
        <step>/              one Orbax step directory per saved step (e.g. checkpoints/200/)
          params/            StandardSave of nnx.to_pure_dict(parameters): nested dict
                             {"embed": [V, D], "layers": {"attn": {"q_proj": [L, D, N, H], ...}, ...},
                              "final_norm": {"scale": [D]}, "lm_head": [D, V] (untied only)}
                             in ``model.param_dtype``; the names/shapes of bsft_jax.models.Decoder.
          opt_state/         StandardSave of nnx.to_pure_dict(nnx.Optimizer state) (AdamW moments)
          train/             StandardSave of {"step": int32[], "rng": uint32[2]}
          data/              Grain iterator position, one process_{i}-of-{n}.json per process
          config/            JsonSave: the resolved config (bsft_jax.setup.config.config_to_dict)
          meta/              JsonSave: {"format": "bsft_jax.train/1", "step": int,
                               "model_config": dataclasses.asdict(DecoderConfig) (vocab_size grown,
                                 valid_vocab_size, eos ids, dtypes),
                               "hf_config": DecoderConfig.to_hf(),
                               "stop_token_ids": [...] (source EOS ids: what generation stops on),
                               "tokenizer_dir": "tokenizer" (relative to RUN_DIR),
                               "behavior": {"enabled", "names", "token_format", "token_ids": {name: id}},
                               "num_params": int, "mesh": {axis: size}}

No JAX and no Orbax here: the names every reader and writer of a run folder agree on, below
:mod:`bsft_jax.checkpoint.manager` (the Orbax manager), :mod:`bsft_jax.checkpoint.read`,
:mod:`bsft_jax.setup.model_setup`, :mod:`bsft_jax.checkpoint.lora_base` and :mod:`bsft_jax.checkpoint.host`,
so they need not import each other in a circle.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bsft_jax import storage
from bsft_jax.errors import UserError
from bsft_jax.models.config import DecoderConfig, Llama3RopeScaling
from bsft_jax.models.lora_config import lora_config_from

FORMAT = "bsft_jax.train/1"
CHECKPOINT_SUBDIR = "checkpoints"
REQUIRED_ITEMS = ("params", "meta")  # what a reader needs of a step
TOKENIZER_SUBDIR = "tokenizer"
# On an object store Orbax cannot rename a finished step into place; it writes this marker last.
ORBAX_COMMIT_MARKER = "commit_success.txt"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, partial or of another format."""


def checkpoint_dir(run_dir: str) -> str:
    """``RUN_DIR/checkpoints``."""
    return storage.join(storage.abspath(run_dir), CHECKPOINT_SUBDIR)


# ----------------------------------------------------------------------------- metadata
def decoder_config_to_dict(config: DecoderConfig) -> dict[str, Any]:
    """All DecoderConfig fields, JSON-ready."""
    d = dataclasses.asdict(config)
    if config.lora is None:
        d.pop("lora")  # readable by versions without LoRA
    for k, v in d.items():
        if isinstance(v, tuple):
            d[k] = list(v)
    return d


def decoder_config_from_dict(d: dict[str, Any], **runtime: Any) -> DecoderConfig:
    """Inverse of :func:`decoder_config_to_dict`; ``runtime`` overrides fields (e.g. ``dtype``)."""
    d = dict(d)
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = Llama3RopeScaling(**d["rope_scaling"])
    if d.get("lora") is not None:
        d["lora"] = lora_config_from(d["lora"])
    for k in ("eos_token_id", "generation_eos_token_ids"):
        if isinstance(d.get(k), list):
            d[k] = tuple(d[k])
    known = {f.name for f in dataclasses.fields(DecoderConfig)}
    unknown = set(d) - known
    if unknown:
        raise CheckpointError(f"model_config has unknown fields {sorted(unknown)} (written by a newer bsft_jax?)")
    d.update(runtime)
    return DecoderConfig(**d)


def make_meta(step: int, config: DecoderConfig, *, behavior: dict[str, Any], num_params: int,
              mesh: dict[str, int], lora: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``meta`` item of a step (see the module docstring; LoRA runs add ``lora``: bsft_jax.checkpoint.lora_base)."""
    meta = {
        "format": FORMAT,
        "step": int(step),
        "model_config": decoder_config_to_dict(config),
        "hf_config": config.to_hf(),
        "stop_token_ids": list(config.stop_token_ids),
        "tokenizer_dir": TOKENIZER_SUBDIR,
        "behavior": behavior,
        "num_params": int(num_params),
        "mesh": dict(mesh),
    }
    if lora is not None:
        meta["lora"] = lora
    return meta
