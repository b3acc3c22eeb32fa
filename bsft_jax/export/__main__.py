"""``python -m bsft_jax.export --checkpoint RUN_DIR [--step N] --out HF_DIR [--dtype bfloat16]``: flags only.

The export itself is :func:`bsft_jax.export.hf.export_checkpoint`.
"""

from __future__ import annotations

import logging
import sys

import jax
from absl import flags

from bsft_jax.errors import cli_boundary
from bsft_jax.export.hf import export_checkpoint
from bsft_jax.setup.cli import parse_flags, setup_logging

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
