"""DecoderConfig: one frozen dataclass for the Qwen2/Qwen2.5 and Llama 3.x decoder families.

The two families differ only by configuration (biases, tied head, RoPE scaling, explicit
``head_dim``), so a single config and a single module cover both; Gemma 3 and Qwen3 too, by
their fields in :mod:`bsft_jax.models.families`. ``from_hf`` reads the ``config.json`` layouts
written by transformers 4.x and 5.x and ``to_hf`` writes a file both read (the conversion lives in
:mod:`bsft_jax.models.hf_config`, the field names and checks both use in
:mod:`bsft_jax.models.config_fields`). Anything we do not implement raises
:class:`UnsupportedConfigError` instead of silently producing wrong numbers.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from bsft_jax.models.config_fields import (
    ACTIVATIONS,
    ATTENTION_IMPLS,
    LAYER_TYPES,
    REMAT_MODES,
    SUPPORTED_MODEL_TYPES,
    Llama3RopeScaling,
    UnsupportedConfigError,
    canonical_dtype,
    cudnn_attention_fits,
)
from bsft_jax.models.families import FAMILY_PRESETS, LinearRopeScaling
from bsft_jax.models.hf_config import config_from_hf, config_to_hf

# The fields' names and checks live in config_fields (below hf_config, which reads them too); they stay
# importable from here.


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Architecture of a Qwen2/Llama-style decoder plus the runtime numerics we train it with.

    Axis letters used across the code base: B batch, T query length, S key length, D hidden size,
    N query heads, K key/value heads, H head dim, F MLP width, V vocabulary rows, L layers.
    """

    model_type: str
    vocab_size: int  # V: rows in the embedding table (may exceed the tokenizer: spare/padded rows)
    hidden_size: int  # D
    intermediate_size: int  # F
    num_layers: int  # L
    num_heads: int  # N
    num_kv_heads: int  # K
    head_dim: int  # H
    rope_theta: float = 10_000.0
    rope_scaling: Llama3RopeScaling | LinearRopeScaling | None = None  # global layers only
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int = 32_768
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None  # as in the source config.json
    pad_token_id: int | None = None
    generation_eos_token_ids: tuple[int, ...] = ()  # from generation_config.json (what servers stop on)
    # Rows [valid_vocab_size, vocab_size) belong to no token: they are masked out of the logits used
    # for the loss and for sampling. None means every row is a real token.
    valid_vocab_size: int | None = None
    source_dtype: str = "float32"  # dtype of the weights in the source checkpoint
    # Runtime numerics (not part of the HF architecture).
    dtype: str = "float32"  # activations / matmul inputs
    param_dtype: str = "float32"  # stored parameters (fp32 master weights for mixed precision)
    logits_dtype: str = "float32"  # accumulation/output dtype of the final projection
    remat: str = "none"  # "none" | "full" | "dots": rematerialisation of each block in training
    # Layers per lax.scan iteration of the full-sequence forward (training, scoring; >= num_layers:
    # fully unrolled). 1 keeps one block in the program whatever the depth (compile time flat);
    # unrolling drops the per-layer slicing of stacked weights/residuals (~10% faster CPU train
    # steps for small models) at a compile time that grows with it. KV-cache decoding always scans.
    scan_unroll: int = 1
    # Attention kernel of the full-sequence forward (training, scoring, prefill without a cache):
    # "einsum": our XLA einsums with fp32 scores/softmax (any backend and dtype);
    # "cudnn":  cuDNN's fused flash attention via jax.nn.dot_product_attention (NVIDIA GPU, bf16/fp16);
    # "auto":   "cudnn" where it applies (GPU backend, bf16/fp16, head_dim <= 128), else "einsum".
    # KV-cache steps always use the einsums (one query row: bandwidth-bound, no flash benefit).
    attention_impl: str = "auto"
    # Gemma 3 / Qwen3 by configuration (defaults reproduce Qwen2/Llama exactly).
    norm_plus_one: bool = False  # RMSNorm scales by (1 + w), computed in fp32 (Gemma)
    post_norms: bool = False  # RMSNorm on each sub-layer's output too: four norms per block (Gemma 3)
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE (Qwen3, Gemma 3)
    activation: str = "silu"  # gated MLP activation, one of ACTIVATIONS
    query_pre_attn_scalar: float | None = None  # attention scale 1/sqrt(this); None: 1/sqrt(head_dim)
    embed_scale: bool = False  # embeddings times sqrt(hidden_size) in the weight dtype, then cast (Gemma)
    # Per-layer attention kind ("full_attention" | "sliding_attention"); None: all full. Sliding layers
    # attend to the last ``sliding_window`` tokens (themselves included) and use ``rope_local_theta``.
    layer_types: tuple[str, ...] | None = None
    sliding_window: int | None = None
    rope_local_theta: float | None = None  # RoPE base of sliding layers (None: rope_theta)
    # LoRA adapters on the block projections (bsft_jax.models.lora.LoraConfig); None: no adapters,
    # the decoder is exactly the plain one. Not part of the HF architecture (to_hf ignores it).
    lora: Any = None

    def __post_init__(self) -> None:
        if self.lora is not None and not self.lora.enabled:  # rank 0 / no targets: exactly no adapters
            object.__setattr__(self, "lora", None)
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedConfigError(
                f"model_type={self.model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}"
            )
        self._check_shapes()
        self._check_runtime()
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        self._check_layer_kinds()
        object.__setattr__(self, "generation_eos_token_ids", tuple(self.generation_eos_token_ids))

    def _check_shapes(self) -> None:
        """Sizes positive, heads grouped evenly, RoPE-able head_dim, valid_vocab_size within the table."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"DecoderConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"DecoderConfig: num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"DecoderConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.valid_vocab_size is not None and not 0 < self.valid_vocab_size <= self.vocab_size:
            raise ValueError(
                f"DecoderConfig.valid_vocab_size={self.valid_vocab_size} must be in (0, vocab_size={self.vocab_size}]"
            )

    def _check_runtime(self) -> None:
        """The runtime numerics: remat mode, attention kernel, scan unroll, canonical dtype names."""
        if self.remat not in REMAT_MODES:
            raise ValueError(f"DecoderConfig.remat must be one of {REMAT_MODES}, got {self.remat!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"DecoderConfig.attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}"
            )
        if int(self.scan_unroll) < 1:
            raise ValueError(f"DecoderConfig.scan_unroll must be >= 1 (layers per scan step), got {self.scan_unroll}")
        for name in ("dtype", "param_dtype", "logits_dtype", "source_dtype"):
            object.__setattr__(self, name, canonical_dtype(getattr(self, name), field=f"DecoderConfig.{name}"))
        if self.attention_impl == "cudnn" and not self.cudnn_attention_fits:
            raise ValueError(
                "DecoderConfig.attention_impl='cudnn' needs dtype bfloat16/float16 and head_dim <= 128, a multiple "
                f"of 8 (got dtype={self.dtype!r}, head_dim={self.head_dim}); use 'auto' to fall back to 'einsum'"
            )

    def _check_layer_kinds(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"DecoderConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.layer_types is None:
            return
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.num_layers:
            raise ValueError(f"DecoderConfig.layer_types has {len(self.layer_types)} entries for "
                             f"num_layers={self.num_layers}")
        bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if bad:
            raise ValueError(f"DecoderConfig.layer_types: unknown kind(s) {bad}; expected {LAYER_TYPES}")
        if self.has_sliding_layers and not (self.sliding_window and int(self.sliding_window) > 0):
            raise ValueError("DecoderConfig.sliding_window must be a positive int when layer_types has "
                             f"'sliding_attention' layers, got {self.sliding_window!r}")

    # ------------------------------------------------------------------ derived
    @property
    def has_sliding_layers(self) -> bool:
        """Some layers attend within a sliding window (Gemma 3's local layers)."""
        return self.layer_types is not None and "sliding_attention" in self.layer_types

    @property
    def sliding_layer_mask(self) -> tuple[bool, ...]:
        """Per layer: True for a sliding-window (local) layer."""
        return tuple(t == "sliding_attention" for t in (self.layer_types or ("full_attention",) * self.num_layers))

    @property
    def attention_scale(self) -> float:
        """Multiplier of q.k: 1/sqrt(query_pre_attn_scalar) (Gemma) or 1/sqrt(head_dim)."""
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def cudnn_attention_fits(self) -> bool:
        """cuDNN flash attention supports this compute dtype and head size (bf16/fp16, head_dim <= 128, % 8)."""
        return cudnn_attention_fits(self.dtype, self.head_dim)

    @property
    def num_query_groups(self) -> int:
        """G = N / K: query heads sharing one key/value head."""
        return self.num_heads // self.num_kv_heads

    @property
    def num_valid_tokens(self) -> int:
        """Rows of the embedding that correspond to real tokens."""
        return self.valid_vocab_size if self.valid_vocab_size is not None else self.vocab_size

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """EOS ids a generation loop should stop on (generation config first, then config.json)."""
        ids = list(self.generation_eos_token_ids)
        eos = self.eos_token_id
        for i in (eos if isinstance(eos, tuple) else (eos,) if eos is not None else ()):
            if i not in ids:
                ids.append(i)
        return tuple(ids)

    def replace(self, **changes: Any) -> DecoderConfig:
        """Returns a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf(cls, source: str | os.PathLike | dict, **runtime: Any) -> DecoderConfig:
        """Builds a config from an HF ``config.json`` (path to the file or its folder, or a dict).

        ``generation_config.json`` beside it, if present, supplies ``generation_eos_token_ids``.
        ``runtime`` sets the non-HF fields (``dtype``, ``param_dtype``, ``remat``, ...). The reader
        is :mod:`bsft_jax.models.hf_config`.
        """
        return config_from_hf(cls, source, runtime)

    def to_hf(self, *, dtype: str | None = None) -> dict[str, Any]:
        """The ``config.json`` dict transformers needs to rebuild this architecture."""
        return config_to_hf(self, dtype)


# ---------------------------------------------------------------------------- presets
_QWEN2_5_COMMON = dict(model_type="qwen2", qkv_bias=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                       max_position_embeddings=32_768, bos_token_id=151643, eos_token_id=151645,
                       generation_eos_token_ids=(151645, 151643), source_dtype="bfloat16")
_LLAMA3_COMMON = dict(model_type="llama", rope_theta=500_000.0, rms_norm_eps=1e-5, max_position_embeddings=131_072,
                      bos_token_id=128000, eos_token_id=(128001, 128008, 128009),
                      generation_eos_token_ids=(128001, 128008, 128009), source_dtype="bfloat16")

PRESETS: dict[str, dict[str, Any]] = {
    # Published sizes: Qwen2.5 model cards, Llama 3.x model cards (counted with embeddings).
    "qwen2_5_0_5b": dict(_QWEN2_5_COMMON, vocab_size=151_936, hidden_size=896, intermediate_size=4864,
                         num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, tie_word_embeddings=True),
    "qwen2_5_1_5b": dict(_QWEN2_5_COMMON, vocab_size=151_936, hidden_size=1536, intermediate_size=8960,
                         num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128, tie_word_embeddings=True),
    "qwen2_5_7b": dict(_QWEN2_5_COMMON, vocab_size=152_064, hidden_size=3584, intermediate_size=18_944,
                       num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, tie_word_embeddings=False),
    "llama3_2_1b": dict(_LLAMA3_COMMON, vocab_size=128_256, hidden_size=2048, intermediate_size=8192,
                        num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64, tie_word_embeddings=True,
                        rope_scaling=Llama3RopeScaling(32.0, 1.0, 4.0, 8192)),
    "llama3_1_8b": dict(_LLAMA3_COMMON, vocab_size=128_256, hidden_size=4096, intermediate_size=14_336,
                        num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, tie_word_embeddings=False,
                        rope_scaling=Llama3RopeScaling(8.0, 1.0, 4.0, 8192)),
    # Gemma 3 (1B, 4B/12B/27B text towers), MedGemma 27B text, Qwen3 0.6B / 8B: see models/families.py.
    **FAMILY_PRESETS,
}


def preset(name: str, **overrides: Any) -> DecoderConfig:
    """A named real-size architecture (see ``PRESETS``), e.g. ``preset("qwen2_5_7b", dtype="bfloat16")``."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return DecoderConfig(**{**PRESETS[name], **overrides})
