"""A LoRA step merged on the host: moved to :mod:`bsft_jax.checkpoint.host` (the checkpoint layer), because
evaluation reads LoRA steps the same way; these names stay importable from here."""

from bsft_jax.checkpoint.host import MergedLayers, load_merged, merged_model

__all__ = ["MergedLayers", "load_merged", "merged_model"]
