"""A training run's checkpoint as a Hugging Face folder: :func:`export_checkpoint`.

The folder loads offline in ``transformers`` and vLLM: sharded safetensors + index, ``config.json``
(grown vocabulary, tie flag), ``generation_config.json`` (the *source* model's EOS ids, so servers
stop where the base model did), the run's tokenizer with the behavior tokens as special tokens, and
the chat template in ``tokenizer_config.json`` and ``chat_template.jinja``. A LoRA run is merged on
the host (:mod:`bsft_jax.export.merge`), or with ``adapter=True`` written as an HF PEFT adapter
(:mod:`bsft_jax.export.peft`). The step is read by :func:`bsft_jax.export.read.read_step`.

Peak host memory is the parameters plus about one parameter array being read; layers are stacked,
so that is one weight of all layers (Qwen2.5-7B: an MLP matrix, 7.6 GB in fp32). Measured
(``python -m bench.export_memory``, 243M parameters): 1.31x the fp32 parameters for an fp32 export.
The folder appears only when complete (temp folder, then rename). ``run_dir`` and ``out`` may be
``gs://`` URLs: an export to a bucket is written to a staging prefix beside ``out``, then committed
with server-side copies, ``config.json`` last (:func:`bsft_jax.storage.commit_dir`), so no
half-written export is ever loadable.

Run it as one process (on any one host of a pod, or a workstation that sees the checkpoint).
"""

from __future__ import annotations

import logging
import time

from bsft_jax import storage
from bsft_jax.checkpoint.host import merged_model
from bsft_jax.checkpoint.layout import checkpoint_dir
from bsft_jax.checkpoint.read import resolve_step
from bsft_jax.checkpoint.recovery import newest_readable, steps_on_disk
from bsft_jax.export.peft import write_adapter
from bsft_jax.export.read import ExportError, ExportStep, load_meta, read_step
from bsft_jax.files import check_writable
from bsft_jax.models.config import canonical_dtype
from bsft_jax.models.hf import save_hf
from bsft_jax.units import parse_size

log = logging.getLogger("bsft_jax.export")


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
                    (:mod:`bsft_jax.export.peft`; LoRA checkpoints are merged by default).

    Raises :class:`CheckpointError` for a missing/partial checkpoint and :class:`ExportError` for
    an existing ``out`` or a mismatching tokenizer, before anything is written.
    """
    run_dir, out = storage.abspath(run_dir), storage.abspath(out)
    if storage.exists(out) and (not storage.isdir(out) or storage.listdir(out)) and not overwrite:
        raise ExportError(f"{out}: exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    check_writable(out, "--out")  # the folder is staged beside it and renamed: a read-only parent fails now
    check_writable(storage.dirname(out), "--out")
    try:
        parse_size(max_shard_size)  # fail on a bad size before the (long) restore
        export_dtype = canonical_dtype(dtype, field="--dtype") if dtype else None
    except ValueError as e:
        raise ExportError(str(e)) from None
    if adapter:
        _check_lora_run(run_dir, step)  # before the (long) restore
    t0 = time.perf_counter()
    step, read = newest_readable(
        run_dir, lambda s: read_step(run_dir, s, dtype=export_dtype, tokenizer_dir=tokenizer_dir), step)
    log.info("restored step %d of %s in %.1fs", step, run_dir, time.perf_counter() - t0)
    t0 = time.perf_counter()
    path = _write(read, out, adapter=adapter, max_shard_size=max_shard_size, overwrite=overwrite)
    kind = "full" if read.lora is None else "LoRA adapter" if adapter else "LoRA merged"
    log.info("wrote %s (%s, %s, step %d) in %.1fs", path, kind, read.dtype, step, time.perf_counter() - t0)
    return path


def _write(read: ExportStep, out: str, *, adapter: bool, max_shard_size: int | str, overwrite: bool) -> str:
    """The HF folder of a full step, the merged HF folder of a LoRA step, or (``adapter``) its PEFT adapter."""
    if read.lora is None:
        model = read.model
    elif adapter:
        return write_adapter(out, read.config, read.lora, read.meta["lora"], read.tokenizer, read.dtype, overwrite)
    else:
        model = merged_model(read.lora, read.meta["lora"]["row_ids"], read.dtype)
    return save_hf(model, read.config, out, tokenizer=read.tokenizer, dtype=read.dtype,
                   max_shard_size=max_shard_size, overwrite=overwrite)


def _check_lora_run(run_dir: str, step: int | None) -> None:
    """``--adapter`` needs a LoRA run (its meta has ``lora``): read from the asked step's meta, or without
    ``step`` from the newest step whose meta reads (every step of a run has the same kind)."""
    ckpt_dir = checkpoint_dir(run_dir)
    if step is not None:
        candidates = [resolve_step(run_dir, step)]
    else:  # none on disk: the reading path names what is missing
        candidates = sorted(steps_on_disk(ckpt_dir), reverse=True) if storage.isdir(ckpt_dir) else []
    for s in candidates:
        try:
            meta = load_meta(run_dir, s)
        except Exception:  # a damaged meta: try an older one; the reading path reports it if none reads
            continue
        if "lora" not in meta:
            raise ExportError(f"{run_dir}: step {s} is a full fine-tuning checkpoint; --adapter needs a LoRA run "
                              "(model.lora.rank > 0)")
        return
