"""Shared test helpers: tiny random HF reference models written by transformers."""

from __future__ import annotations

import os

import numpy as np
import torch

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def tiny_hf_model(kind: str, *, tie: bool = False, vocab: int = 256, layers: int = 2, seed: int = 0,
                  dtype: torch.dtype = torch.float32):
    """A tiny random Qwen2 or Llama (llama3 rope scaling, head_dim != hidden/heads, GQA) in eval mode.

    Biases and norm scales are perturbed so that a port which ignored them would fail.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if kind == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
                          rope_theta=10000.0, max_position_embeddings=512, eos_token_id=vocab - 1,
                          bos_token_id=vocab - 2)
        model = Qwen2ForCausalLM(cfg)
    elif kind == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=tie,
                          rope_scaling=dict(LLAMA3_SCALING), rope_theta=500000.0, max_position_embeddings=512,
                          eos_token_id=[vocab - 1, vocab - 3], bos_token_id=vocab - 2)
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.to(dtype).eval()


def save_tiny(tmp_path, kind: str, *, tie: bool = False, **kw) -> tuple[str, object]:
    """Writes a tiny model with ``save_pretrained``; returns (folder, torch model)."""
    model = tiny_hf_model(kind, tie=tie, **kw)
    folder = os.path.join(str(tmp_path), f"{kind}_{'tied' if tie else 'untied'}")
    model.save_pretrained(folder)
    return folder, model


def padded_batch(vocab: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, mask, positions) for 3 rows: full, left-padded, right-padded."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab, (3, 12))
    mask = np.ones((3, 12), np.int64)
    mask[1, :4] = 0
    mask[2, 9:] = 0
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    return ids, mask, positions


def torch_logits(model, ids, mask, positions) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions))
    return out.logits.float().numpy()
