"""A LoRA step merged on the host: moved to :mod:`bsft_jax.run.host` (the checkpoint layer), because
evaluation reads LoRA steps the same way; these names stay importable from here."""

from bsft_jax.run.host import MergedLayers, load_merged, merged_model

__all__ = ["MergedLayers", "load_merged", "merged_model"]
