"""Gemma 3 (text) and Qwen3: parity with tiny random transformers models, sliding windows, the KV cache,
export round trips, the HF config layouts, and the presets' published parameter counts."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from bsft_jax import KVCache, load_hf, save_hf
from bsft_jax.models.config import DecoderConfig, UnsupportedConfigError, preset
from bsft_jax.models.decoder import abstract_decoder, count_params
from bsft_jax.models.families import LinearRopeScaling
from tests.models.tiny_families import WINDOW, padded_long_batch, save_tiny_family

FAMILIES = [("gemma3_text", True), ("gemma3_text", False), ("qwen3", True), ("qwen3", False)]


def _torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{kind: (folder, torch model)} for tied Gemma 3 and Qwen3."""
    root = tmp_path_factory.mktemp("families")
    return {kind: save_tiny_family(root, kind) for kind in ("gemma3_text", "qwen3")}


@pytest.mark.parametrize("kind, tie", FAMILIES)
def test_fp32_parity_and_export_round_trip(tmp_path, kind, tie):
    """Logits within 1e-4 of transformers on a padded batch 3x the window; save_hf reloads in transformers."""
    folder, ref = save_tiny_family(tmp_path, kind, tie=tie)
    ids, mask = padded_long_batch()
    expected = _torch_logits(ref, ids, mask)
    model, config = load_hf(folder)
    assert config.model_type == kind and config.tie_word_embeddings == tie
    real = mask.astype(bool)
    got = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert np.abs(got - expected)[real].max() <= 1e-4

    out = save_hf(model, config, tmp_path / "exported")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(reloaded) is type(ref)
    assert np.abs(_torch_logits(reloaded, ids, mask) - expected)[real].max() <= 1e-5
    assert load_hf(out)[1] == config


def test_sliding_window_matters(tiny):
    """Dropping the window (all layers global) changes the Gemma logits beyond the window: it is applied."""
    folder, ref = tiny["gemma3_text"]
    ids, mask = padded_long_batch()
    model, config = load_hf(folder)
    assert config.layer_types == ("sliding_attention", "full_attention", "sliding_attention")
    assert config.sliding_window == WINDOW and config.rope_local_theta == 10_000.0
    assert config.rope_scaling == LinearRopeScaling(2.0) and config.query_pre_attn_scalar == 24
    no_window, _ = load_hf(folder, sliding_window=10_000)
    a = np.asarray(model(jnp.asarray(ids[:1])))
    b = np.asarray(no_window(jnp.asarray(ids[:1])))
    np.testing.assert_allclose(a[:, :WINDOW], b[:, :WINDOW], atol=1e-5)  # inside the first window: equal
    assert np.abs(a[:, WINDOW:] - b[:, WINDOW:]).max() > 1e-3


@pytest.mark.parametrize("kind", ["gemma3_text", "qwen3"])
def test_kv_cache_decode_equals_full_forward(tiny, kind):
    """Prefill + one-token steps through the cache give the full forward's logits, past the window too."""
    folder, _ = tiny[kind]
    model, config = load_hf(folder)
    ids, mask = padded_long_batch()
    mask[2, :] = 1  # a cache holds one left-padded sequence per row
    full = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    run = nnx.jit(lambda m, ids, mask, cache: m(ids, attention_mask=mask, cache=cache))
    cache = KVCache.init(config, batch=3, max_length=16)
    logits, cache = run(model, jnp.asarray(ids[:, :5]), jnp.asarray(mask[:, :5]), cache)
    steps = [np.asarray(logits)]
    for t in range(5, 12):
        logits, cache = run(model, jnp.asarray(ids[:, t:t + 1]), jnp.asarray(mask[:, t:t + 1]), cache)
        steps.append(np.asarray(logits))
    real = mask.astype(bool)
    assert np.abs(np.concatenate(steps, axis=1) - full)[real].max() <= 1e-5


def test_transformers_4x_layout_reads_the_same(tiny):
    """A 4.x-style Gemma config.json (rope_theta, rope_local_base_freq, rope_scaling, sliding_window_pattern)."""
    folder, _ = tiny["gemma3_text"]
    new = DecoderConfig.from_hf(folder)
    hf = json.load(open(os.path.join(folder, "config.json")))
    hf = {k: v for k, v in hf.items() if k not in ("rope_parameters", "layer_types", "hidden_activation")}
    hf.update(rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, rope_scaling={"rope_type": "linear",
              "factor": 2.0}, sliding_window_pattern=2, hidden_act="gelu_pytorch_tanh", torch_dtype="float32")
    assert DecoderConfig.from_hf(hf) == new.replace(generation_eos_token_ids=())  # no generation_config here


@pytest.mark.parametrize("field, value, message", [
    ("final_logit_softcapping", 30.0, "soft-capping"),
    ("attn_logit_softcapping", 50.0, "soft-capping"),
    ("hidden_activation", "relu", "relu"),
    ("use_bidirectional_attention", True, "bidirectional"),
])
def test_unsupported_gemma_fields_are_refused(tiny, field, value, message):
    hf = json.load(open(os.path.join(tiny["gemma3_text"][0], "config.json")))
    hf[field] = value
    with pytest.raises(UnsupportedConfigError, match=f"{field}.*{message}"):
        DecoderConfig.from_hf(hf)
    hf[field] = None  # null soft-capping (Gemma 3's own value) is fine
    if field.endswith("softcapping"):
        DecoderConfig.from_hf(hf)


def test_qwen3_sliding_window_refused(tiny):
    hf = json.load(open(os.path.join(tiny["qwen3"][0], "config.json")))
    hf["use_sliding_window"] = True
    with pytest.raises(UnsupportedConfigError, match="use_sliding_window"):
        DecoderConfig.from_hf(hf)


# Published counts. Gemma 3 technical report (Table 1): embedding / non-embedding parameters in millions
# (the 4B-27B embedding figures include the vision projector, ~3-5M, so only vocab x D is checked).
# Qwen3 model cards: total and non-embedding parameters in billions.
GEMMA_NON_EMBEDDING_M = {"gemma3_1b": 698, "gemma3_4b": 3209, "gemma3_12b": 10_759, "gemma3_27b": 25_600,
                         "medgemma_27b_text": 25_600}
QWEN3_BILLIONS = {"qwen3_0_6b": (0.6, 0.44), "qwen3_8b": (8.2, 6.95)}


@pytest.mark.parametrize("name", sorted(GEMMA_NON_EMBEDDING_M) + sorted(QWEN3_BILLIONS))
def test_presets_have_the_published_parameter_counts(name):
    config = preset(name)
    total = count_params(abstract_decoder(config))  # eval_shape only: no memory
    embedding = config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2)
    if name in GEMMA_NON_EMBEDDING_M:
        assert round((total - embedding) / 1e6) == GEMMA_NON_EMBEDDING_M[name]
        assert config.layer_types.count("full_attention") == config.num_layers // 6
    else:
        billions, non_embedding = QWEN3_BILLIONS[name]
        assert round(total / 1e9, 1) == billions and round((total - embedding) / 1e9, 2) == non_embedding
    back = DecoderConfig.from_hf(config.to_hf())  # generation eos ids live in generation_config.json
    assert back == config.replace(dtype="float32", param_dtype="float32", generation_eos_token_ids=())


def test_gemma3_1b_total_matches_the_model_card():
    assert count_params(abstract_decoder(preset("gemma3_1b"))) == 999_885_952


def test_qwen2_and_llama_write_no_family_fields():
    """The existing families' config.json is unchanged by the new fields."""
    hf = preset("qwen2_5_0_5b").to_hf()
    assert "layer_types" not in hf and "query_pre_attn_scalar" not in hf and hf["hidden_act"] == "silu"
    assert jax.tree.leaves(preset("llama3_2_1b").replace(num_layers=1).to_hf()["rope_parameters"])
