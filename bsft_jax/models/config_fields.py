"""The vocabulary of :class:`~bsft_jax.models.config.DecoderConfig`'s fields: the accepted names (model
types, activations, layer kinds, attention kernels, remat modes, dtypes), the Llama 3 RoPE scaling,
the cuDNN attention rule and the error for an HF config we do not implement.

Below both :mod:`bsft_jax.models.config` and :mod:`bsft_jax.models.hf_config` (which reads HF files
into these names), so the two need not import each other in a circle. Import them from
``bsft_jax.models.config``, which re-exports every one.
"""

from __future__ import annotations

import dataclasses

from bsft_jax.errors import UserError

SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "qwen3", "gemma3_text")
ACTIVATIONS = ("silu", "gelu_tanh")  # SwiGLU / GeGLU with tanh-approximated GELU
LAYER_TYPES = ("full_attention", "sliding_attention")
_DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
ATTENTION_IMPLS = ("einsum", "cudnn", "auto")
CUDNN_ATTENTION_DTYPES = ("bfloat16", "float16")  # what cuDNN flash attention computes in
REMAT_MODES = ("none", "full", "dots")  # per-block rematerialisation (the decoder keys its policies by these)


class UnsupportedConfigError(UserError, ValueError):
    """A Hugging Face config asks for something this port does not implement."""


def canonical_dtype(name: str, *, field: str = "dtype") -> str:
    """Normalises a dtype name ("bf16", "bfloat16", "torch.bfloat16") or raises naming the field."""
    key = str(name).removeprefix("torch.").lower()
    if key not in _DTYPE_NAMES:
        raise ValueError(f"{field}: unsupported dtype {name!r}; expected one of float32, bfloat16, float16")
    return _DTYPE_NAMES[key]


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1-style frequency-dependent RoPE scaling (``rope_type == "llama3"``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


def cudnn_attention_fits(dtype: str, head_dim: int | None = None) -> bool:
    """Whether cuDNN flash attention computes in ``dtype`` (bf16/fp16) and, when known, ``head_dim`` (<= 128,
    a multiple of 8). The one rule behind ``attention_impl='cudnn'``: the run config checks the dtype
    (the head size may come from an HF folder later), DecoderConfig both."""
    return dtype in CUDNN_ATTENTION_DTYPES and (head_dim is None or (head_dim <= 128 and head_dim % 8 == 0))
