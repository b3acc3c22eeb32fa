"""Reading one checkpoint step for an export: :func:`read_step`, the one reader of both kinds of run.

What is read, and nothing more: ``checkpoints/<step>/meta`` (model config, EOS ids, behavior token
ids, format version; ``model_config.stop_token_ids`` must agree with ``stop_token_ids``), the
run's tokenizer (its behavior-token ids must match the checkpoint's), and ``checkpoints/<step>/params``:

* a full fine-tuning step: every parameter, restored once into host numpy arrays, one array at a
  time, whatever mesh it was trained on (Orbax gathers the shards), in the export dtype when that is
  narrower than the training dtype (:func:`restore_params_on_host`). The optimizer state is never loaded.
* a LoRA step (its meta has ``lora``): the trainable arrays (adapters + behavior rows) on the host, and
  the frozen base rebuilt from the checkpoint's base reference (hash checked) on the host CPU
  (:func:`bsft_jax.checkpoint.host.load_lora_step`, shared with evaluation).

A damaged meta or params item raises :class:`DamagedStep` (the caller may try an older step); a wrong
tokenizer or format raises :class:`ExportError` / :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from bsft_jax import storage

# the LoRA step reader and the host restore live in the checkpoint layer (evaluation reads LoRA steps
# too); LoraStep, load_lora_step and restore_tree_on_host stay importable from here
from bsft_jax.checkpoint.host import LoraStep, load_lora_step, params_dir, restore_tree_on_host
from bsft_jax.checkpoint.layout import (
    FORMAT,
    TOKENIZER_SUBDIR,
    CheckpointError,
    checkpoint_dir,
    decoder_config_from_dict,
)
from bsft_jax.checkpoint.read import read_meta, read_saved_config
from bsft_jax.checkpoint.recovery import DamagedStep, failure_reason
from bsft_jax.errors import UserError
from bsft_jax.models.config import DecoderConfig, canonical_dtype
from bsft_jax.models.decoder import Decoder, abstract_decoder
from bsft_jax.setup.config import settings_from_saved
from bsft_jax.setup.model_setup import load_tokenizer
from bsft_jax.setup.settings import Settings


class ExportError(UserError, RuntimeError):
    """The export cannot proceed (bad arguments, mismatching tokenizer, existing output folder)."""


@dataclasses.dataclass(frozen=True)
class ExportStep:
    """One checkpoint step, read and checked: exactly one of ``model`` (full run) and ``lora`` is set."""

    meta: dict[str, Any]
    config: DecoderConfig
    dtype: str  # the export dtype
    tokenizer: Any
    model: Decoder | None = None  # full fine-tuning: the parameters as host arrays
    lora: LoraStep | None = None


def read_step(run_dir: str, step: int, *, dtype: str | None = None, tokenizer_dir: str | None = None) -> ExportStep:
    """Step ``step`` of a run, ready to write (see the module docstring for what is read and checked).

    dtype:         the export dtype, canonical (default: the source model's, ``model_config.source_dtype``).
    tokenizer_dir: the tokenizer to ship (default: the run's own); its behavior-token ids must match.
    """
    meta = load_meta(run_dir, step)
    config = decoder_config_from_dict(meta["model_config"])
    if list(config.stop_token_ids) != list(meta["stop_token_ids"]):
        raise CheckpointError(f"{checkpoint_dir(run_dir)}/{step}/meta: stop_token_ids {meta['stop_token_ids']} "
                              f"disagree with model_config {list(config.stop_token_ids)}")
    export_dtype = dtype or canonical_dtype(config.source_dtype, field="model_config.source_dtype")
    tok_path = storage.abspath(tokenizer_dir or storage.join(run_dir, meta.get("tokenizer_dir", TOKENIZER_SUBDIR)))
    tokenizer = read_tokenizer(tok_path)
    check_tokenizer(tokenizer, config, meta, tok_path)
    what = "the adapters" if "lora" in meta else "the parameters"
    try:
        if "lora" in meta:
            lora = load_lora_step(run_dir, step, meta, run_settings(run_dir, step))
            return ExportStep(meta, config, export_dtype, tokenizer, lora=lora)
        model = restore_params_on_host(run_dir, step, config, _restore_dtype(config, export_dtype))
        return ExportStep(meta, config, export_dtype, tokenizer, model=model)
    except (CheckpointError, ExportError):
        raise
    except Exception as e:  # a damaged params item (truncated or missing array files)
        raise DamagedStep(f"{checkpoint_dir(run_dir)}/{step}/params: cannot restore {what} "
                          f"({type(e).__name__}: {failure_reason(e)})") from None


# ----------------------------------------------------------------------------- meta and tokenizer
def load_meta(run_dir: str, step: int) -> dict[str, Any]:
    """The ``meta`` item of ``step``, with the fields an export needs; a corrupt one is a :class:`DamagedStep`."""
    try:
        meta = read_meta(run_dir, step)
    except CheckpointError:
        raise
    except Exception as e:  # a corrupt meta item: Orbax raises many types
        raise DamagedStep(f"{checkpoint_dir(run_dir)}/{step}/meta: unreadable ({type(e).__name__}: {e})") from None
    for key in ("model_config", "stop_token_ids"):
        if key not in meta:
            raise CheckpointError(f"{checkpoint_dir(run_dir)}/{step}/meta: no {key!r} field (format {FORMAT})")
    return meta


def read_tokenizer(path: str) -> Any:
    """The HF tokenizer in folder ``path``; a missing folder is a :class:`CheckpointError` saying what to pass."""
    if not storage.isdir(path):
        raise CheckpointError(f"{path}: tokenizer folder missing (the trainer writes RUN_DIR/{TOKENIZER_SUBDIR}/ at "
                              "the start of a run); pass --tokenizer DIR to use another one")
    return load_tokenizer(path)


def check_tokenizer(tokenizer: Any, config: DecoderConfig, meta: dict[str, Any], where: str) -> None:
    """The tokenizer must be the run's: same behavior-token ids (single special tokens), fits the table."""
    if len(tokenizer) > config.vocab_size:
        raise ExportError(f"{where}: tokenizer has {len(tokenizer)} entries but the model only "
                          f"{config.vocab_size} embedding rows; is this the run's tokenizer?")
    behavior = meta.get("behavior") or {}
    for name, expected in dict(behavior.get("token_ids") or {}).items():
        token = behavior["token_format"].format(name=name)
        got = tokenizer.convert_tokens_to_ids(token)
        if got != expected or len(tokenizer.encode(token, add_special_tokens=False)) != 1:
            raise ExportError(f"{where}: behavior token {token!r} is id {got} here but {expected} in the checkpoint "
                              "(or not a single token); use the run's own tokenizer folder")


# ----------------------------------------------------------------------------- parameters on the host
def _restore_dtype(config: DecoderConfig, export_dtype: str) -> str:
    """Restore in the export dtype when it is narrower (halves host memory for fp32 -> bf16)."""
    if jnp.dtype(export_dtype).itemsize < jnp.dtype(config.param_dtype).itemsize:
        return export_dtype
    return config.param_dtype


def restore_params_on_host(run_dir: str, step: int, config: DecoderConfig, dtype: str) -> Decoder:
    """The parameters of a step as a Decoder holding host numpy arrays in ``dtype``, one array at a time.

    Whatever mesh wrote the checkpoint, Orbax gathers each array; ``dtype`` casts while reading.
    Not :func:`bsft_jax.checkpoint.read.load_params`: that restores every array at once into device
    buffers, and on CPU the read buffers and the device copies coexist. Measured on a 243M-parameter
    checkpoint (``python -m bench.export_memory``): peak host memory 2.07x the fp32 parameters that
    way, 1.31x here (the parameters plus about one stacked [L, ...] array being read).
    """
    graphdef, abstract = nnx.split(abstract_decoder(config.replace(param_dtype=dtype)))
    values = restore_tree_on_host(params_dir(run_dir, step), nnx.to_pure_dict(abstract))
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(values))
    return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------- LoRA steps
def run_settings(run_dir: str, step: int) -> Settings:
    """The typed settings of the config saved with a step (how the run built its base)."""
    return settings_from_saved(read_saved_config(run_dir, step))
