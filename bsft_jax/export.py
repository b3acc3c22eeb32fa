"""``python -m bsft_jax.export --checkpoint RUN_DIR [--step N] --out HF_DIR [--dtype bfloat16]``.

Turns a training run's checkpoint (the layout of :mod:`bsft_jax.run.checkpoint`) into a Hugging Face
folder that ``transformers`` and vLLM load offline: sharded safetensors + index, ``config.json``
(grown vocabulary, tie flag), ``generation_config.json`` (the *source* model's EOS ids, so
servers stop where the base model did), the run's tokenizer with the behavior tokens as special
tokens, and the chat template in ``tokenizer_config.json`` and ``chat_template.jinja``.

What is read, and nothing more: ``checkpoints/<step>/meta`` (model config, EOS ids, behavior
token ids, format version), ``checkpoints/<step>/params`` (the parameters only: the optimizer
state is never loaded) and ``RUN_DIR/tokenizer``. Parameters are restored once, into host numpy
arrays, one array at a time, whatever mesh they were trained on (Orbax gathers the shards), in the
export dtype when it is narrower than the training dtype; ``save_hf`` then converts and writes
them tensor by tensor. Peak host memory is the parameters plus about one parameter array being
read; layers are stacked, so that is one weight of all layers (Qwen2.5-7B: an MLP matrix, 7.6 GB
in fp32). Measured (``python -m bench.export_memory``, 243M parameters): 1.31x the fp32
parameters for an fp32 export. The folder appears only when complete (temp folder, then rename).
``--checkpoint`` and ``--out`` may be ``gs://`` URLs: an export to a bucket is written to a
staging prefix beside ``--out``, then committed with server-side copies, ``config.json`` last
(:func:`bsft_jax.storage.commit_dir`), so no half-written export is ever loadable.

Run it as one process (on any one host of a pod, or a workstation that sees the checkpoint).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from flax import nnx, traverse_util

from bsft_jax import storage
from bsft_jax.errors import UserError, cli_boundary
from bsft_jax.files import check_writable
from bsft_jax.models.config import DecoderConfig, canonical_dtype
from bsft_jax.models.decoder import Decoder, abstract_decoder
from bsft_jax.models.hf import save_hf
from bsft_jax.run.checkpoint import (
    FORMAT,
    TOKENIZER_SUBDIR,
    CheckpointError,
    checkpoint_dir,
    decoder_config_from_dict,
    read_meta,
    resolve_step,
)
from bsft_jax.run.cli import parse_flags, setup_logging
from bsft_jax.run.recovery import DamagedStep, failure_reason, newest_readable, steps_on_disk
from bsft_jax.units import parse_size

log = logging.getLogger("bsft_jax.export")

# Orbax items a step must hold for an export (the trainer writes more: opt_state, train, data, config).


class ExportError(UserError, RuntimeError):
    """The export cannot proceed (bad arguments, mismatching tokenizer, existing output folder)."""


# ----------------------------------------------------------------------------- checks
def _load_meta(run_dir: str, step: int) -> dict[str, Any]:
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


def _load_tokenizer(path: str) -> Any:
    from bsft_jax.run.model_setup import load_tokenizer

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


def _restore_dtype(config: DecoderConfig, export_dtype: str) -> str:
    """Restore in the export dtype when it is narrower (halves host memory for fp32 -> bf16)."""
    if jnp.dtype(export_dtype).itemsize < jnp.dtype(config.param_dtype).itemsize:
        return export_dtype
    return config.param_dtype


def restore_params_on_host(run_dir: str, step: int, config: DecoderConfig, dtype: str) -> Decoder:
    """The parameters of a step as a Decoder holding host numpy arrays in ``dtype``, one array at a time.

    Whatever mesh wrote the checkpoint, Orbax gathers each array; ``dtype`` casts while reading.
    Not :func:`bsft_jax.run.checkpoint.load_params`: that restores every array at once into device
    buffers, and on CPU the read buffers and the device copies coexist. Measured on a 243M-parameter
    checkpoint (``python -m bench.export_memory``): peak host memory 2.07x the fp32 parameters that
    way, 1.31x here (the parameters plus about one stacked [L, ...] array being read).
    """
    graphdef, abstract = nnx.split(abstract_decoder(config.replace(param_dtype=dtype)))
    item_dir = storage.join(checkpoint_dir(run_dir), str(step), "params")
    values = restore_tree_on_host(item_dir, nnx.to_pure_dict(abstract))
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(values))
    return nnx.merge(graphdef, state)


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


# ----------------------------------------------------------------------------- export
def _restore_step(run_dir: str, step: int, dtype: str | None, tokenizer_dir: str | None
                  ) -> tuple[Decoder, DecoderConfig, str, Any]:
    """``(model on host, config, export dtype, tokenizer)`` of one step, after checking its meta and tokenizer.

    A damaged meta or params item raises :class:`DamagedStep` (the caller may try an older step);
    a wrong tokenizer or format raises :class:`ExportError` / :class:`CheckpointError`.
    """
    meta = _load_meta(run_dir, step)
    config = decoder_config_from_dict(meta["model_config"])
    if list(config.stop_token_ids) != list(meta["stop_token_ids"]):
        raise CheckpointError(f"{checkpoint_dir(run_dir)}/{step}/meta: stop_token_ids {meta['stop_token_ids']} "
                              f"disagree with model_config {list(config.stop_token_ids)}")
    export_dtype = dtype or canonical_dtype(config.source_dtype, field="model_config.source_dtype")
    tok_path = storage.abspath(tokenizer_dir or storage.join(run_dir, meta.get("tokenizer_dir", TOKENIZER_SUBDIR)))
    tokenizer = _load_tokenizer(tok_path)
    check_tokenizer(tokenizer, config, meta, tok_path)
    restore_dtype = _restore_dtype(config, export_dtype)
    try:
        model = restore_params_on_host(run_dir, step, config, restore_dtype)
    except CheckpointError:
        raise
    except Exception as e:  # a damaged params item (truncated or missing array files)
        raise DamagedStep(f"{checkpoint_dir(run_dir)}/{step}/params: cannot restore the parameters "
                          f"({type(e).__name__}: {failure_reason(e)})") from None
    return model, config, export_dtype, tokenizer


def export_checkpoint(run_dir: str, out: str, *, step: int | None = None, dtype: str | None = None,
                      max_shard_size: int | str = "5GB", overwrite: bool = False,
                      tokenizer_dir: str | None = None, adapter: bool = False) -> str:
    """Writes the Hugging Face folder ``out`` from a run's checkpoint; returns its absolute path.

    run_dir:        a ``python -m bsft_jax.train`` run directory (``config.run_dir``).
    step:           the checkpoint step (default: the newest that restores; a newer damaged step is
                    skipped with a warning, and left on disk as it is).
    dtype:          weight dtype of the export (default: the source model's, ``config.source_dtype``).
    max_shard_size: safetensors shard size limit ("5GB", "500MB" or bytes).
    overwrite:      replace a non-empty ``out`` (the old folder is removed only after the new one is complete).
    tokenizer_dir:  tokenizer to ship (default: ``RUN_DIR/tokenizer``); its behavior-token ids must match.
    adapter:        LoRA runs only: write an HF PEFT adapter instead of the merged model
                    (:mod:`bsft_jax.export_lora`; LoRA checkpoints are merged by default).

    Raises :class:`CheckpointError` for a missing/partial checkpoint and :class:`ExportError` for
    an existing ``out`` or a mismatching tokenizer, before anything is written.
    """
    run_dir, out = storage.abspath(run_dir), storage.abspath(out)
    if storage.exists(out) and (not storage.isdir(out) or storage.listdir(out)) and not overwrite:
        raise ExportError(f"{out}: exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    check_writable(out, "--out")  # the folder is staged beside it and renamed: a read-only parent fails now
    check_writable(storage.dirname(out), "--out")
    if _is_lora_run(run_dir, step, adapter):  # adapters + rows only: the base is rebuilt from the checkpoint
        return _export_lora_run(run_dir, step, out, dtype=dtype, tokenizer_dir=tokenizer_dir, adapter=adapter,
                                max_shard_size=max_shard_size, overwrite=overwrite)
    try:
        parse_size(max_shard_size)  # fail on a bad size before the (long) restore
        export_dtype = canonical_dtype(dtype, field="--dtype") if dtype else None
    except ValueError as e:
        raise ExportError(str(e)) from None
    t0 = time.perf_counter()
    step, (model, config, export_dtype, tokenizer) = newest_readable(
        run_dir, lambda s: _restore_step(run_dir, s, export_dtype, tokenizer_dir), step)
    log.info("restored step %d of %s in %.1fs", step, run_dir, time.perf_counter() - t0)
    t0 = time.perf_counter()
    path = save_hf(model, config, out, tokenizer=tokenizer, dtype=export_dtype, max_shard_size=max_shard_size,
                   overwrite=overwrite)
    log.info("wrote %s (%s, step %d) in %.1fs", path, export_dtype, step, time.perf_counter() - t0)
    return path


def _is_lora_run(run_dir: str, step: int | None, adapter: bool) -> bool:
    """Whether the run is a LoRA run (its meta has ``lora``), read from the asked step's meta, or without
    ``step`` from the newest step whose meta reads (every step of a run has the same kind)."""
    ckpt_dir = checkpoint_dir(run_dir)
    if step is not None:
        candidates = [resolve_step(run_dir, step)]
    else:  # none on disk: the full-checkpoint path below names what is missing
        candidates = sorted(steps_on_disk(ckpt_dir), reverse=True) if storage.isdir(ckpt_dir) else []
    for s in candidates:
        try:
            meta = _load_meta(run_dir, s)
        except Exception:  # a damaged meta: try an older one; the export path reports it if none reads
            continue
        if "lora" in meta:
            return True
        if adapter:
            raise ExportError(f"{run_dir}: step {s} is a full fine-tuning checkpoint; --adapter needs a LoRA run "
                              "(model.lora.rank > 0)")
        return False
    return False


def _read_lora_step(run_dir: str, step: int, dtype: str | None, tokenizer_dir: str | None) -> tuple[Any, ...]:
    """``(meta, export dtype, tokenizer, (bundle, lora, trainable))`` of one LoRA step; damaged files raise
    :class:`DamagedStep` (the caller may try an older step)."""
    from bsft_jax.export_lora import load_lora_step, run_settings

    meta = _load_meta(run_dir, step)
    config = decoder_config_from_dict(meta["model_config"])
    export_dtype = canonical_dtype(dtype or config.source_dtype, field="--dtype")
    tok_path = storage.abspath(tokenizer_dir or storage.join(run_dir, meta.get("tokenizer_dir", TOKENIZER_SUBDIR)))
    tokenizer = _load_tokenizer(tok_path)
    check_tokenizer(tokenizer, config, meta, tok_path)
    try:
        loaded = load_lora_step(run_dir, step, meta, run_settings(run_dir, step))
    except (CheckpointError, ExportError):
        raise
    except Exception as e:  # a damaged params item (truncated or missing array files)
        raise DamagedStep(f"{checkpoint_dir(run_dir)}/{step}/params: cannot restore the adapters "
                          f"({type(e).__name__}: {failure_reason(e)})") from None
    return meta, export_dtype, tokenizer, loaded


def _export_lora_run(run_dir: str, step: int | None, out: str, *, dtype: str | None, tokenizer_dir: str | None,
                     adapter: bool, max_shard_size: str, overwrite: bool) -> str:
    """Merged model or PEFT adapter of a LoRA run's step (default: the newest that restores, as for full
    checkpoints) through :func:`bsft_jax.export_lora.write_lora_export`."""
    from bsft_jax.export_lora import write_lora_export

    step, (meta, export_dtype, tokenizer, loaded) = newest_readable(
        run_dir, lambda s: _read_lora_step(run_dir, s, dtype, tokenizer_dir), step)
    return write_lora_export(loaded, meta, out, step=step, tokenizer=tokenizer, dtype=export_dtype, adapter=adapter,
                             max_shard_size=max_shard_size, overwrite=overwrite)


# ----------------------------------------------------------------------------- CLI
_USAGE = """python -m bsft_jax.export --checkpoint RUN_DIR --out HF_DIR [--step N] [--dtype bfloat16]
       [--max_shard_size 5GB] [--tokenizer DIR] [--overwrite] [--adapter]

Writes a Hugging Face folder (safetensors, config, generation config, tokenizer, chat template) from
a training run's checkpoint; for a LoRA run, the merged model or (--adapter) an HF PEFT adapter."""


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("checkpoint", None, "training run directory (config.run_dir)", flag_values=fv)
    flags.DEFINE_string("out", None, "output Hugging Face folder (a local path or gs://bucket/prefix)",
                        flag_values=fv)
    flags.DEFINE_integer("step", None, "checkpoint step (default: the newest one that restores)", flag_values=fv)
    flags.DEFINE_string("dtype", None, "float32 | bfloat16 | float16 (default: the source model's dtype)",
                        flag_values=fv)
    flags.DEFINE_string("max_shard_size", "5GB", "safetensors shard size limit", flag_values=fv)
    flags.DEFINE_string("tokenizer", None, "tokenizer folder (default: RUN_DIR/tokenizer)", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace a non-empty output folder", flag_values=fv)
    flags.DEFINE_bool("adapter", False, "LoRA runs: write an HF PEFT adapter (adapter_config.json + "
                      "adapter_model.safetensors) instead of the merged model", flag_values=fv)
    flags.mark_flags_as_required(["checkpoint", "out"], flag_values=fv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``argv``: the arguments after the program name); user errors print one line, exit 2."""
    fv = flags.FlagValues()
    _define_flags(fv)
    code = parse_flags(fv, ["bsft-export", *(sys.argv[1:] if argv is None else argv)], _USAGE)
    if code is not None:
        return code
    # Export is host work: never claim the accelerators (a training job may hold them on this host).
    jax.config.update("jax_platforms", "cpu")
    setup_logging()
    for noisy in ("orbax",):  # Orbax warns that the read-only folder is read-only
        logging.getLogger(noisy).setLevel(logging.ERROR)

    def export() -> None:
        print(export_checkpoint(fv.checkpoint, fv.out, step=fv.step, dtype=fv.dtype, max_shard_size=fv.max_shard_size,
                                overwrite=fv.overwrite, tokenizer_dir=fv.tokenizer, adapter=fv.adapter))

    return cli_boundary(export)  # missing/damaged checkpoint, bad flag, existing --out: one line, exit 2


if __name__ == "__main__":
    sys.exit(main())
