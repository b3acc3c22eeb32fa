"""Tiny random transformers Gemma 3 (text) and Qwen3 models, the references of the family tests."""

from __future__ import annotations

import os

import numpy as np
import torch

WINDOW = 4  # sliding window of the tiny Gemma: the 12-token test batches are three windows long


def tiny_family_model(kind: str, *, tie: bool = True, vocab: int = 256, seed: int = 0, hidden: int = 64):
    """A tiny random Gemma3ForCausalLM or Qwen3ForCausalLM in eval mode (fp32).

    Gemma: 3 layers (sliding, full, sliding), window 4, query_pre_attn_scalar != head_dim, linear RoPE
    scaling on the global layer and another base on the local ones. Norm weights are perturbed
    (Gemma's start at zero) so a port that ignored one would fail. ``hidden`` 64 has an exact sqrt;
    48 does not (Gemma's embedding scale then depends on the dtype it is rounded to).
    """
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    if kind == "gemma3_text":
        cfg = Gemma3TextConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24, sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
            max_position_embeddings=512, tie_word_embeddings=tie, eos_token_id=[vocab - 1, vocab - 3],
            bos_token_id=vocab - 2, pad_token_id=0)
        model = Gemma3ForCausalLM(cfg)
    elif kind == "qwen3":
        cfg = Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=tie,
                          max_position_embeddings=512, eos_token_id=vocab - 1, bos_token_id=vocab - 2)
        model = Qwen3ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.float().eval()


def save_tiny_family(tmp_path, kind: str, *, tie: bool = True, dtype=None, **kw) -> tuple[str, object]:
    """Writes a tiny model with ``save_pretrained`` (cast to ``dtype``, a torch dtype, if given);
    returns (folder, torch model)."""
    model = tiny_family_model(kind, tie=tie, **kw)
    if dtype is not None:
        model = model.to(dtype)
    suffix = "" if dtype is None else "_" + str(dtype).removeprefix("torch.")
    folder = os.path.join(str(tmp_path), f"{kind}_{'tied' if tie else 'untied'}{suffix}")
    model.save_pretrained(folder)
    return folder, model


def padded_long_batch(vocab: int = 256, length: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) for 3 rows longer than the window: full, left-padded by 4, right-padded by 3."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab, (3, length))
    mask = np.ones((3, length), np.int64)
    mask[1, :4] = 0
    mask[2, length - 3:] = 0
    return ids, mask
