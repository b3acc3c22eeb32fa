"""Shared pieces of the real-weights tests: chat prompts, reference logits, loaded-model cache."""

from __future__ import annotations

import functools

import numpy as np
import torch

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
FIXTURE_OF = {"smollm2-135m-instruct": "smollm2_dir", "qwen2.5-coder-0.5b-instruct": "qwen_dir"}

# Clinical questions of different lengths (ragged once chat-templated).
CLINICAL_PROMPTS = (
    "List the first steps in managing a patient with suspected sepsis in the emergency department.",
    "What are the common side effects of metformin?",
    "Explain how to tell a migraine from a tension headache, and when a headache needs urgent imaging.",
    "A 67-year-old man has had chest pain for two hours. Describe what you would ask and check first.",
)


def model_dir(request, name: str) -> str:
    """The session's converted folder of ``name`` (a fixture of policy.py: only that model is converted)."""
    return request.getfixturevalue(FIXTURE_OF[name])


@functools.lru_cache(maxsize=4)
def tokenizer(folder: str):
    """The converted folder's tokenizer (cached per folder)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def chat_ids(tok, question: str) -> list[int]:
    """The chat-templated prompt (generation prompt included) as token ids."""
    text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                   tokenize=False)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, mask, positions), rows left-padded to the longest."""
    t = max(map(len, rows))
    ids = np.full((len(rows), t), pad_id, np.int64)
    mask = np.zeros((len(rows), t), np.int64)
    for i, r in enumerate(rows):
        ids[i, t - len(r):] = r
        mask[i, t - len(r):] = 1
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    return ids, mask, positions


def hf_model(folder: str, dtype: torch.dtype = torch.float32):
    """transformers' model from the converted folder (the numerical reference)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).eval()


def hf_logits(model, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions))
    return out.logits.float().numpy()
