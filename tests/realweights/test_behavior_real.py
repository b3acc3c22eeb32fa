"""Behavior tokens on the real tokenizers and embedding tables of both built-in models."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bsft_jax import load_hf
from bsft_jax.behavior import BehaviorSpec, add_behavior_tokens
from bsft_jax.behavior.tokenizer import trailing_placeholder_ids
from bsft_jax.models import builtin

from .common import MODELS, model_dir

QWEN_REAL_TOKENS = 151_665  # 151,643 BPE ranks + 22 special tokens, as in the official Qwen2.5 tokenizer


def _rows(model) -> dict[str, np.ndarray]:
    out = {"embed": np.array(model.embed.get_value())}
    if getattr(model, "lm_head", None) is not None:
        out["lm_head"] = np.array(model.lm_head.get_value()).T  # [V, D]
    return out


@pytest.mark.parametrize("name", MODELS)
def test_behavior_tokens_on_the_real_tokenizer_and_table(request, name):
    from transformers import AutoTokenizer

    folder = model_dir(request, name)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)  # fresh: the surgery mutates it
    model, config = load_hf(folder, dtype="float32")
    before, n_before = _rows(model), len(tok)
    spec = BehaviorSpec()
    model, new_config, ids = add_behavior_tokens(model, config, tok, spec, seed=0)
    after = _rows(model)

    for behavior, tid in ids.items():  # each a single id, and the chat template renders it as one token
        token = spec.token(behavior)
        assert tok.encode(token, add_special_tokens=False) == [tid]
        text = tok.apply_chat_template([{"role": "user", "content": "Fever for 3 days?"},
                                        {"role": "assistant", "content": f"{token}Please see a doctor."}],
                                       tokenize=False)
        assert token in text
        assert tok(text, add_special_tokens=False)["input_ids"].count(tid) == 1

    for key, old in before.items():  # every pre-existing row bit-identical
        assert after[key].shape[1] == old.shape[1]
        np.testing.assert_array_equal(after[key][:n_before], old[:n_before], err_msg=f"{name} {key}")
        new = after[key][sorted(ids.values())]
        assert np.all(np.linalg.norm(new, axis=1) > 0.1 * np.linalg.norm(old[:n_before], axis=1).mean())

    if name == "smollm2-135m-instruct":  # 49,152 rows, all used: grows to the next multiple of 128
        assert n_before == config.vocab_size == 49_152
        assert new_config.vocab_size == 49_280 and new_config.vocab_size % 128 == 0
        assert sorted(ids.values()) == [49_152, 49_153, 49_154]
        assert new_config.valid_vocab_size == 49_155
    else:  # placeholder [PAD...] entries were dropped at conversion: spare rows are reused, no growth
        assert n_before == QWEN_REAL_TOKENS and config.vocab_size == 151_936
        assert new_config.vocab_size == config.vocab_size
        assert sorted(ids.values()) == [QWEN_REAL_TOKENS, QWEN_REAL_TOKENS + 1, QWEN_REAL_TOKENS + 2]
        n_after = len(tok)
        assert new_config.valid_vocab_size == n_after == QWEN_REAL_TOKENS + 3
        for key, old in before.items():  # the spare rows no token uses yet stay bit-identical too
            np.testing.assert_array_equal(after[key][n_after:], old[n_after:], err_msg=f"{name} {key} spare rows")
        assert trailing_placeholder_ids(tok) == []


def test_qwen_gguf_placeholders_are_detected_and_dropped(qwen_dir):
    with open(os.path.join(qwen_dir, builtin.MANIFEST)) as f:
        manifest = json.load(f)
    assert manifest["placeholder_tokens_dropped"] == 151_936 - QWEN_REAL_TOKENS
    with open(os.path.join(qwen_dir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    assert "[PAD151665]" not in tj["model"]["vocab"] and not any("[PAD" in a["content"] for a in tj["added_tokens"])
