"""LoRA in the decoder: off is the unchanged program, a fresh adapter is the base, adapters == merged weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bsft_jax.models import DecoderConfig
from bsft_jax.models.decoder import init_decoder
from bsft_jax.models.lora import LoraConfig, LoraParam, lora_config_from, merged_weight, projection_owner


def _config(**kw) -> DecoderConfig:
    base = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=8, qkv_bias=True)
    base.update(kw)
    return DecoderConfig(**base)


def _gemma3_config(**kw) -> DecoderConfig:
    """A tiny Gemma 3: sliding + full layers (per-layer RoPE / masks in the scan), four norms, q/k norms, GeGLU."""
    return _config(model_type="gemma3_text", qkv_bias=False, norm_plus_one=True, post_norms=True, qk_norm=True,
                   activation="gelu_tanh", query_pre_attn_scalar=6.0, embed_scale=True, sliding_window=3,
                   layer_types=("sliding_attention", "full_attention"), rope_local_theta=10_000.0, **kw)


FAMILIES = {"qwen2": _config, "gemma3": _gemma3_config}
IDS = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 7)))


def test_rank_zero_is_off_and_the_program_is_unchanged():
    assert lora_config_from({"rank": 0}) is None and lora_config_from({"rank": 4, "targets": ""}) is None
    off = _config(lora=LoraConfig(rank=0))
    assert off.lora is None and off == _config()
    plain = init_decoder(_config())
    jaxpr = str(jax.make_jaxpr(lambda ids: plain(ids))(IDS))
    off_model = init_decoder(off)
    assert jaxpr == str(jax.make_jaxpr(lambda ids: off_model(ids))(IDS))
    assert not jax.tree.leaves(nnx.state(init_decoder(off), LoraParam))


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_fresh_adapter_is_the_base_bitwise(model_type):
    lora = LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "o", "down"))
    base = init_decoder(_config(model_type=model_type, qkv_bias=model_type == "qwen2"), seed=1)
    adapted = init_decoder(base.config.replace(lora=lora), seed=1)
    # base weights do not depend on LoRA being on (factors are drawn after every base weight)
    np.testing.assert_array_equal(np.asarray(adapted.layers.attn.q_proj.value),
                                  np.asarray(base.layers.attn.q_proj.value))
    assert adapted.layers.attn.q_lora_a.value.shape == (2, 32, 4)
    assert adapted.layers.attn.o_lora_a.value.shape == (2, 4, 8, 4)
    assert adapted.layers.attn.q_lora_a.get_metadata()["logical_axes"] == ("layers", "embed", "lora_rank")
    assert not hasattr(adapted.layers.attn, "k_lora_a")
    np.testing.assert_array_equal(np.asarray(adapted(IDS)), np.asarray(base(IDS)))


@pytest.mark.parametrize("family,scan_unroll", [("qwen2", 1), ("qwen2", 2), ("gemma3", 1)])
def test_adapters_equal_merged_weights(family, scan_unroll):
    make = FAMILIES[family]
    lora = LoraConfig(rank=3, alpha=6.0)
    config = make(lora=lora, scan_unroll=scan_unroll)
    model = init_decoder(config, seed=2)
    rng = np.random.RandomState(3)
    for name in lora.targets:  # random B so every adapter contributes
        owner = getattr(model.layers, "attn" if projection_owner(name) == "attn" else "mlp")
        b = getattr(owner, f"{name}_lora_b")
        b.value = jnp.asarray(rng.normal(0, 0.1, b.value.shape), jnp.float32)
    ours = np.asarray(model(IDS))
    merged = init_decoder(make(scan_unroll=scan_unroll), seed=2)
    for name in lora.targets:
        owner_name = projection_owner(name)
        src, dst = getattr(model.layers, owner_name), getattr(merged.layers, owner_name)
        w = merged_weight(np.asarray(getattr(src, f"{name}_proj").value),
                          np.asarray(getattr(src, f"{name}_lora_a").value),
                          np.asarray(getattr(src, f"{name}_lora_b").value), lora.scale, np.float32)
        getattr(dst, f"{name}_proj").value = jnp.asarray(w)
    got = np.asarray(merged(IDS))
    assert np.abs(ours - np.asarray(init_decoder(make(), seed=2)(IDS))).max() > 1e-3
    np.testing.assert_allclose(got, ours, atol=1e-5, rtol=0)


def test_gemma3_lora_dropout_only_with_a_key():
    """Dropout keys ride the layer scan beside Gemma 3's per-layer sliding flags; no key: deterministic."""
    model = init_decoder(_gemma3_config(lora=LoraConfig(rank=2, dropout=0.5)), seed=4)
    for name in ("q", "down"):
        owner = getattr(model.layers, projection_owner(name))
        b = getattr(owner, f"{name}_lora_b")
        b.value = jnp.ones_like(b.value)
    plain = np.asarray(model(IDS))
    np.testing.assert_array_equal(np.asarray(model(IDS, dropout_rng=None)), plain)
    dropped = np.asarray(model(IDS, dropout_rng=jax.random.key(0)))
    assert np.isfinite(dropped).all() and np.abs(dropped - plain).max() > 1e-4


def test_config_validation_names_the_lora_field(tmp_path):
    from bsft_jax.setup.config import ConfigError, validate_config
    from tests.train.common import tiny_config

    for field, value, match in (("targets", "q,qq", "model.lora.targets"), ("dropout", 1.5, "model.lora.dropout"),
                                ("rank", -1, "model.lora.rank"), ("base_dtype", "int8", "model.lora.base_dtype")):
        cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"), **{f"model.lora.{field}": value})
        with pytest.raises(ConfigError, match=match):
            validate_config(cfg, num_devices=1)
