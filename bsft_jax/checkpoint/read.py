"""Reading a run's checkpoint for evaluation and export: which step (:func:`resolve_step`, the one listing of a
run's steps), its ``meta`` and saved config, and its parameters as a Decoder (:func:`load_params`; a LoRA
step is rebuilt and merged on the host by :mod:`bsft_jax.checkpoint.host`).

The Orbax manager these read through: :mod:`bsft_jax.checkpoint.manager`; the format's names:
:mod:`bsft_jax.checkpoint.layout`.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from bsft_jax import storage
from bsft_jax.checkpoint.host import load_merged
from bsft_jax.checkpoint.layout import (
    FORMAT,
    ORBAX_COMMIT_MARKER,
    REQUIRED_ITEMS,
    CheckpointError,
    checkpoint_dir,
    decoder_config_from_dict,
)
from bsft_jax.checkpoint.manager import open_read_only
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import Decoder, abstract_decoder
from bsft_jax.models.sharding import state_shardings
from bsft_jax.setup.config import settings_from_saved


def read_meta(run_dir: str, step: int | None = None) -> dict[str, Any]:
    """The ``meta`` item of ``step`` (default: the latest); raises :class:`CheckpointError` if absent."""
    ckpt = open_read_only(run_dir)
    step = resolve_step(run_dir, step)
    meta = ckpt.read_json(step, "meta")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{run_dir}: step {step} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def read_saved_config(run_dir: str, step: int) -> dict[str, Any]:
    """The ``config`` item of ``step``: the resolved config the run saved beside that step, as a dict."""
    return open_read_only(run_dir).read_json(step, "config")


def steps_on_disk(ckpt_dir: str) -> list[int]:
    """The committed step folders of ``RUN_DIR/checkpoints`` (``<step>/``), oldest first; local or gs://."""
    names = storage.listdir(ckpt_dir)
    return sorted(int(n) for n in names if n.isdigit() and _step_complete(storage.join(ckpt_dir, n)))


def resolve_step(run_dir: str, step: int | None = None) -> int:
    """The step to read (default: the latest complete one) after checking the folder holds it.

    The one listing of a run's steps for readers (export, evaluation, :func:`load_params`).

    Raises :class:`CheckpointError` naming the folder and what is missing: no run directory, no
    ``checkpoints/``, no complete step, the step absent, or a step without ``params/`` / ``meta/``.
    """
    run_dir = storage.abspath(run_dir)
    if not storage.isdir(run_dir):
        raise CheckpointError(f"{run_dir}: no such run directory")
    ckpt_dir = checkpoint_dir(run_dir)
    if not storage.isdir(ckpt_dir):
        raise CheckpointError(f"{run_dir}: no checkpoints/ folder (is this a bsft_jax run directory? "
                              "python -m bsft_jax.train writes RUN_DIR/checkpoints/<step>/)")
    steps = steps_on_disk(ckpt_dir)
    if not steps:
        partial = sorted(n for n in storage.listdir(ckpt_dir) if "tmp" in n)
        hint = f" (only unfinished saves: {partial})" if partial else ""
        raise CheckpointError(f"{ckpt_dir}: no complete checkpoint step{hint}")
    if step is None:
        step = steps[-1]
    elif int(step) not in steps:
        raise CheckpointError(f"{ckpt_dir}: no complete checkpoint for step {step} (available: {steps})")
    step_dir = storage.join(ckpt_dir, str(int(step)))
    missing = [item + "/" for item in REQUIRED_ITEMS if not storage.isdir(storage.join(step_dir, item))]
    if missing:
        raise CheckpointError(f"{step_dir}: partial checkpoint, missing {', '.join(missing)} "
                              f"(readers need {', '.join(i + '/' for i in REQUIRED_ITEMS)}); "
                              f"choose another step with --step (available: {steps})")
    return int(step)


def _step_complete(step_dir: str) -> bool:
    """Locally a step folder exists only once complete (renamed into place); on gs:// it needs Orbax's marker."""
    if storage.is_url(step_dir):
        return storage.isfile(storage.join(step_dir, ORBAX_COMMIT_MARKER))
    return storage.isdir(step_dir)


def load_params(run_dir: str, step: int | None = None, *, mesh: Mesh | None = None,
                **runtime: Any) -> tuple[Decoder, DecoderConfig, dict[str, Any]]:
    """Loads only the parameters of a run's checkpoint into a Decoder: ``(model, config, meta)``.

    mesh:     place parameters by the rules table on this mesh (default: the first device).
    runtime:  DecoderConfig overrides such as ``dtype="float32"``. Parameters keep the dtype they
              were trained in (``param_dtype`` of the run).
    """
    meta = read_meta(run_dir, step)
    if "lora" in meta:  # adapters + rows only: rebuild the base and merge on the host (bsft_jax.checkpoint.host)
        settings = settings_from_saved(read_saved_config(run_dir, int(meta["step"])))
        return load_merged(run_dir, meta, settings, mesh=mesh, **runtime)
    config = decoder_config_from_dict(meta["model_config"], **runtime)
    graphdef, abstract = nnx.split(abstract_decoder(config))
    if mesh is not None:
        shardings = state_shardings(abstract, mesh)
    else:
        single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: single, abstract)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    model = nnx.merge(graphdef, open_read_only(run_dir).restore_params(meta["step"], target))
    return model, config, meta
