"""Export: a training run's checkpoint as a Hugging Face folder or an HF PEFT adapter.

``read`` (one checkpoint step, full or LoRA, read and checked: :func:`read_step`; the LoRA reader and
the host-side merge it uses live in :mod:`bsft_jax.checkpoint.host`, ``merge`` keeps their old names), ``hf``
(:func:`export_checkpoint`, the HF folder), ``peft`` (the PEFT adapter). ``python -m bsft_jax.export``
is ``__main__`` (flags only).

Names load on first use, so ``import bsft_jax.export`` stays light.
"""

from bsft_jax._lazy import lazy_getattr

_HOMES = {
    "ExportError": "bsft_jax.export.read",
    "read_step": "bsft_jax.export.read",
    "export_checkpoint": "bsft_jax.export.hf",
    # the console script of installs made before export became a package: bsft-export=bsft_jax.export:main
    "main": "bsft_jax.export.__main__",
}

__all__ = sorted(_HOMES)
__getattr__ = lazy_getattr(__name__, _HOMES)
