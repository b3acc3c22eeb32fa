"""GGUF file -> ordinary Hugging Face folder (safetensors, config.json, tokenizer), numpy only.

The ``gguf`` package (the reader llama.cpp maintains) memory-maps the file and dequantizes each
tensor in numpy (Q4_1, Q5_0, Q8_0, ... -> float32); this module maps llama.cpp's tensor names to
HF names and undoes the one layout change llama.cpp's converter makes: for ``llama`` models it
stores the Q and K projections with the rows of each head interleaved for its rotary layout
(``convert_hf_to_gguf.py``'s ``permute``); :func:`unpermute_qk` is its exact inverse. Qwen2 is
stored unpermuted. No torch is needed at run time.

The tokenizer: the ``tokenizer.*`` metadata is read here with the ``gguf`` package and handed to
transformers' GGUF tokenizer builder (``transformers.integrations.gguf.convert_gguf_tokenizer``,
built on ``tokenizers``), then saved with the chat template the GGUF carries. We do not call
``AutoTokenizer.from_pretrained(dir, gguf_file=...)``: its metadata reader imports torch. The
result is the same ``tokenizer.json`` (tests/realweights/test_conversion.py compares them).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from bsft_jax.errors import UserError
from bsft_jax.models import safetensors_io
from bsft_jax.models.config import DecoderConfig

# llama.cpp tensor name -> HF tensor name ({i}: layer index).
_NAME_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
_PATTERNS = [(re.compile("^" + re.escape(g).replace(r"\{i\}", r"(\d+)") + "$"), h) for g, h in _NAME_MAP.items()]
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")


class GGUFConversionError(ValueError):
    """The GGUF file is not a model this converter understands."""


def hf_tensor_name(gguf_name: str) -> str | None:
    """The HF name of a llama.cpp tensor name, or None if it has none."""
    for pattern, hf in _PATTERNS:
        m = pattern.match(gguf_name)
        if m:
            return hf.format(i=m.group(1)) if m.groups() else hf
    return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation for ``llama`` GGUF files.

    llama.cpp writes ``w.reshape(n, 2, r // n // 2, d).swapaxes(1, 2)``: within each head, the
    rows of the two rotary halves are interleaved. HF keeps them as two contiguous halves.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(reader: Any, key: str, default: Any = None) -> Any:
    """One metadata value of a GGUF file (``default`` if absent)."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _tensors(reader: Any) -> dict[str, Any]:
    return {t.name: t for t in reader.tensors}


def decoder_config(reader: Any, *, source_dtype: str, stop_token_ids: Sequence[int]) -> DecoderConfig:
    """The architecture recorded in the GGUF metadata, as a :class:`DecoderConfig`."""
    arch = field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFConversionError(f"GGUF architecture {arch!r} is not supported (only {SUPPORTED_ARCHITECTURES})")
    tensors = _tensors(reader)
    hidden = int(field(reader, f"{arch}.embedding_length"))
    n_heads = int(field(reader, f"{arch}.attention.head_count"))
    vocab_rows = int(tensors["token_embd.weight"].shape[1])  # ggml order: [d, V]
    stops = tuple(int(i) for i in stop_token_ids)
    return DecoderConfig(
        model_type=arch,
        vocab_size=vocab_rows,
        hidden_size=hidden,
        intermediate_size=int(field(reader, f"{arch}.feed_forward_length")),
        num_layers=int(field(reader, f"{arch}.block_count")),
        num_heads=n_heads,
        num_kv_heads=int(field(reader, f"{arch}.attention.head_count_kv", n_heads)),
        head_dim=int(field(reader, f"{arch}.rope.dimension_count", hidden // n_heads)),
        rope_theta=float(field(reader, f"{arch}.rope.freq_base", 10_000.0)),
        # stored as float32: float(str(...)) gives back 1e-05, not 9.999999747378752e-06
        rms_norm_eps=float(str(np.float32(field(reader, f"{arch}.attention.layer_norm_rms_epsilon")))),
        tie_word_embeddings="output.weight" not in tensors,
        qkv_bias="blk.0.attn_q.bias" in tensors,
        max_position_embeddings=int(field(reader, f"{arch}.context_length", 32_768)),
        bos_token_id=_optional_int(field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=stops[0] if len(stops) == 1 else stops,
        pad_token_id=_optional_int(field(reader, "tokenizer.ggml.padding_token_id")),
        generation_eos_token_ids=stops,
        source_dtype=source_dtype,
    )


def _optional_int(v: Any) -> int | None:
    return None if v is None else int(v)


def dequantized(tensor: Any, config: DecoderConfig) -> np.ndarray:
    """One GGUF tensor as a float32 array in HF layout (Q/K un-permuted for llama)."""
    # gguf and transformers are imported where used: this module loads with models.builtin (every CLI's
    # config check), and only a conversion needs them (import-time cost: 0.3 s and seconds)
    from gguf import GGMLQuantizationType, quants

    shape = tuple(int(s) for s in reversed(tensor.shape))  # ggml lists dims fastest-first
    if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        arr = np.asarray(tensor.data, dtype=np.float32)
    else:
        arr = quants.dequantize(tensor.data, tensor.tensor_type)
    arr = arr.reshape(shape)
    if config.model_type == "llama":
        if tensor.name.endswith("attn_q.weight"):
            arr = unpermute_qk(arr, config.num_heads)
        elif tensor.name.endswith("attn_k.weight"):
            arr = unpermute_qk(arr, config.num_kv_heads)
    return arr


def pending_tensors(reader: Any, config: DecoderConfig, np_dtype: np.dtype) -> list[safetensors_io.PendingTensor]:
    """Every model tensor as a lazily dequantized safetensors entry (HF names and layout)."""
    out = []
    for t in reader.tensors:
        name = hf_tensor_name(t.name)
        if name is None:
            if t.name == "rope_freqs.weight":  # recomputed from config.json's rope parameters
                continue
            raise GGUFConversionError(f"GGUF tensor {t.name!r} has no Hugging Face counterpart")
        shape = tuple(int(s) for s in reversed(t.shape))

        def produce(t=t) -> np.ndarray:
            return dequantized(t, config).astype(np_dtype)

        out.append(safetensors_io.PendingTensor(name, shape, np_dtype, produce))
    return out


def _tokenizer_mapping(*names: str) -> tuple[Any, ...]:
    """Names from transformers' GGUF tokenizer module (``integrations/gguf``, transformers 5.x; the
    pinned 5.24.0 is what is tested). An older transformers is a one-line error, not an ImportError."""
    try:
        from transformers.integrations.gguf import gguf_tokenizer_mapping as module
    except ImportError as e:
        import transformers

        raise UserError(f"converting a GGUF tokenizer needs transformers' integrations.gguf module "
                        f"(transformers==5.24.0 is pinned in requirements.txt; installed: "
                        f"{transformers.__version__}): pip install transformers==5.24.0") from e
    return tuple(getattr(module, n) for n in names)


def gguf_tokenizer_fields(reader: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(architecture, tokenizer_dict, tokenizer_config)`` as transformers' GGUF tokenizer builder expects them.

    The same grouping as transformers' ``get_gguf_tokenizer``, read with ``gguf.GGUFReader`` (no torch).
    """
    _SPECIAL_TOKENS, GGUF_TOKENIZER_MAPPING = _tokenizer_mapping("_SPECIAL_TOKENS", "GGUF_TOKENIZER_MAPPING")
    grouped = {group: {name: field(reader, f"tokenizer.{key}") for key, name in renames.items()
                       if f"tokenizer.{key}" in reader.fields}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer, config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer.get("tokenizer_type") == "llama":  # as transformers: sentencepiece files add BOS unless told
        config.setdefault("add_bos_token", True)
    for name, key in _SPECIAL_TOKENS.items():
        token_id = field(reader, f"tokenizer.ggml.{key}")
        config[name] = tokenizer["tokens"][int(token_id)] if token_id is not None else None
    return str(field(reader, "general.architecture")), tokenizer, config


def load_gguf_tokenizer(gguf_path: str, reader: Any = None) -> Any:
    """A fast tokenizer rebuilt from the GGUF vocabulary, with the GGUF's chat template (no torch needed)."""
    from transformers import PreTrainedTokenizerFast

    (convert_gguf_tokenizer,) = _tokenizer_mapping("convert_gguf_tokenizer")

    if reader is None:
        from gguf import GGUFReader

        reader = GGUFReader(gguf_path)
    architecture, tokenizer_dict, tokenizer_config = gguf_tokenizer_fields(reader)
    backend, extra = convert_gguf_tokenizer(architecture, tokenizer_dict)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)


# llama.cpp's converter names the vocabulary entries it invents to fill a table's spare rows "[PAD<id>]".
PLACEHOLDER_PATTERN = r"\[PAD\d+\]"


def drop_placeholders(tokenizer_dir: str, pattern: str = PLACEHOLDER_PATTERN) -> int:
    """Removes trailing placeholder tokens from a saved fast tokenizer; returns how many.

    They are edited out of ``tokenizer.json`` (vocabulary and added tokens) and
    ``tokenizer_config.json``, so ``len(tokenizer)`` is the number of real tokens and the model's
    rows beyond it are spare rows that behavior tokens reuse (as in the official Qwen2.5 folders).
    """
    regex = re.compile(pattern)
    tj_path = os.path.join(tokenizer_dir, "tokenizer.json")
    with open(tj_path, encoding="utf-8") as f:
        tj = json.load(f)
    vocab: dict[str, int] = tj["model"]["vocab"]
    added = tj.get("added_tokens", [])
    ids = {i: t for t, i in vocab.items()} | {a["id"]: a["content"] for a in added}
    first = max(ids) + 1
    while first - 1 in ids and regex.fullmatch(ids[first - 1]):
        first -= 1
    dropped = max(ids) + 1 - first
    if not dropped:
        return 0
    tj["model"]["vocab"] = {t: i for t, i in vocab.items() if i < first}
    tj["added_tokens"] = [a for a in added if a["id"] < first]
    with open(tj_path, "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    tc_path = os.path.join(tokenizer_dir, "tokenizer_config.json")
    if os.path.isfile(tc_path):
        with open(tc_path, encoding="utf-8") as f:
            tc = json.load(f)
        decoder = tc.get("added_tokens_decoder", {})
        tc["added_tokens_decoder"] = {k: v for k, v in decoder.items() if int(k) < first}
        with open(tc_path, "w", encoding="utf-8") as f:
            json.dump(tc, f, indent=2, ensure_ascii=False)
    return dropped
