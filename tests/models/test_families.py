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


def test_bf16_embedding_is_bit_identical_to_transformers(tmp_path):
    """Gemma's sqrt(D) embedding scale in bf16 weights: D = 48 (sqrt inexact, rounded to bf16's 6.9375)
    gives transformers' bf16 model's embedding bit for bit, and logits within a few bf16 ulps."""
    folder, ref = save_tiny_family(tmp_path, "gemma3_text", dtype=torch.bfloat16, hidden=48)
    model, config = load_hf(folder, dtype="bfloat16")
    assert config.hidden_size == 48 and config.param_dtype == config.dtype == "bfloat16"
    ids, mask = padded_long_batch()
    with torch.no_grad():
        expected = ref.model.embed_tokens(torch.tensor(ids)).float().numpy()
        expected_logits = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()
    got = model.embed_tokens(jnp.asarray(ids))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), expected)
    logits = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)).astype(jnp.float32))
    err = np.abs(logits - expected_logits)[mask.astype(bool)]
    print(f"tiny gemma bf16 (D=48): max |dlogit| {err.max():.2e}, logit scale {np.abs(expected_logits).max():.2f}")
    assert err.max() <= 2e-2


def test_embedding_scale_is_in_the_weight_dtype(tmp_path):
    """fp32 weights, bf16 compute: rows * sqrt(D) in fp32, then cast (transformers scales in the weight
    dtype); the full forward, the KV-cache decode and the per-layer decode model embed alike."""
    from bsft_jax.decode.layered import unstack_layers

    folder, _ = save_tiny_family(tmp_path, "gemma3_text", hidden=48)
    model, config = load_hf(folder, dtype="float32", compute_dtype="bfloat16")
    ids, _ = padded_long_batch()
    rows = np.asarray(model.embed.value)[ids]
    expected = (rows * np.float32(np.sqrt(48.0))).astype(jnp.bfloat16)
    compute_dtype_scale = rows.astype(jnp.bfloat16) * jnp.bfloat16(np.sqrt(48.0))  # 6.9375, the old rounding
    assert np.mean(np.asarray(compute_dtype_scale) != expected) > 0.1  # the two roundings differ: the test can fail
    for owner in (model, unstack_layers(model)):  # generate() decodes with the per-layer model
        got = owner.embed_tokens(jnp.asarray(ids))
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(got), expected)
    hidden = np.asarray(model(jnp.asarray(ids), return_hidden=True))
    cached, _ = model(jnp.asarray(ids), cache=KVCache.init(config, batch=3, max_length=12), return_hidden=True)
    np.testing.assert_array_equal(np.asarray(cached), hidden)  # the cached path embeds through the same method


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


# Published totals, exact. Text-only Gemma 3 (262,144 embedding rows): KerasHub's gemma3_{1b,4b,12b,27b}_text
# presets and llama.cpp's GGUF conversions (n_vocab 262,144); MedGemma 27B text has the same architecture and
# rows. Qwen3: the checkpoints' parameter counts (0.6B: tied head counted once, as transformers counts it;
# 8B: the Hub's safetensors total).
PUBLISHED_TOTALS = {"gemma3_1b": 999_885_952, "gemma3_4b": 3_880_099_328, "gemma3_12b": 11_765_788_416,
                    "gemma3_27b": 27_009_002_240, "medgemma_27b_text": 27_009_002_240,
                    "qwen3_0_6b": 596_049_920, "qwen3_8b": 8_190_735_360}
# The Gemma 3 4B/12B/27B checkpoints are multimodal (Gemma3ForConditionalGeneration): their text
# config has vocab_size 262,208, i.e. 64 embedding rows past the 262,144-token text vocabulary (the first
# is the image soft token, image_token_index 262,144). The presets keep those rows, since the text tower
# taken from those checkpoints has them: their totals are the text-only ones plus 64 x hidden_size.
MULTIMODAL_EXTRA_ROWS = {"gemma3_4b": 64, "gemma3_12b": 64, "gemma3_27b": 64}


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTALS))
def test_presets_have_the_published_parameter_counts(name):
    config = preset(name)
    total = count_params(abstract_decoder(config))  # eval_shape only: no memory
    extra_rows = MULTIMODAL_EXTRA_ROWS.get(name, 0)
    assert config.vocab_size == (151_936 if name.startswith("qwen3") else 262_144 + extra_rows)
    assert total == PUBLISHED_TOTALS[name] + extra_rows * config.hidden_size
    if name.startswith("gemma3") or name.startswith("medgemma"):
        assert config.layer_types.count("full_attention") == config.num_layers // 6
    back = DecoderConfig.from_hf(config.to_hf())  # generation eos ids live in generation_config.json
    assert back == config.replace(dtype="float32", param_dtype="float32", generation_eos_token_ids=())


def test_qwen2_and_llama_write_no_family_fields():
    """The existing families' config.json is unchanged by the new fields."""
    hf = preset("qwen2_5_0_5b").to_hf()
    assert "layer_types" not in hf and "query_pre_attn_scalar" not in hf and hf["hidden_act"] == "silu"
    assert jax.tree.leaves(preset("llama3_2_1b").replace(num_layers=1).to_hf()["rope_parameters"])
