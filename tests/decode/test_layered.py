"""The per-layer decode model: cached decoding equals the stacked model's full forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bsft_jax.decode.layered import LayerCache, LayeredDecoder, unstack_layers
from bsft_jax.models import DecoderConfig
from bsft_jax.models.decoder import init_decoder


def _config(**kw) -> DecoderConfig:
    base = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3,
                num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True)
    base.update(kw)
    return DecoderConfig(**base)


def test_unstack_layers_gives_one_buffer_per_layer():
    model = init_decoder(_config(), seed=0)
    layered = unstack_layers(model)
    assert isinstance(layered, LayeredDecoder) and len(layered.blocks) == 3
    stacked = model.layers.mlp.gate_proj.value
    for i, block in enumerate(layered.blocks):
        assert block.mlp.gate_proj.value.shape == stacked.shape[1:]
        np.testing.assert_array_equal(block.mlp.gate_proj.value, stacked[i])
        assert block.attn.q_proj.logical_axes == ("embed", "q_heads", "head_dim")  # no "layers" axis
    np.testing.assert_array_equal(layered.embed.value, model.embed.value)


# Gemma 3: (1 + w) norms, post norms, q/k norms, GeGLU, query_pre_attn_scalar, embed scale, and
# sliding layers (window 4 < 12 tokens, own RoPE base); Qwen3: q/k norms. Weights perturbed below so
# that every (1 + w) / q-k norm weight matters.
FAMILIES = {
    "qwen2": {},
    "gemma3": dict(model_type="gemma3_text", qkv_bias=False, norm_plus_one=True, post_norms=True, qk_norm=True,
                   activation="gelu_tanh", query_pre_attn_scalar=12.0, embed_scale=True, sliding_window=4,
                   layer_types=("sliding_attention", "full_attention", "sliding_attention"), rope_local_theta=1e4,
                   rope_theta=1e6),
    "qwen3": dict(model_type="qwen3", qkv_bias=False, qk_norm=True),
}


def _perturb_norms(model) -> None:
    """Random norm scales (they start at 1 or 0): a decode path that skipped a norm would show it."""
    rng = np.random.default_rng(7)
    for path, leaf in nnx.iter_graph(model):
        if isinstance(leaf, nnx.Param) and path[-1] == "scale":
            leaf.value = leaf.value + jnp.asarray(rng.normal(0, 0.3, leaf.value.shape), leaf.value.dtype)


@pytest.mark.parametrize(("family", "tie"), [("qwen2", False), ("qwen2", True), ("gemma3", True),
                                             ("gemma3", False), ("qwen3", False)])
def test_layered_cached_decode_equals_full_forward(family, tie):
    """Prefill + one-token steps through the per-layer cache give the full forward's logits (fp32),
    past the sliding window too."""
    model = init_decoder(_config(tie_word_embeddings=tie, **FAMILIES[family]), seed=1)
    _perturb_norms(model)
    layered = unstack_layers(model)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 64, (3, 12)), jnp.int32)
    mask = np.ones((3, 12), np.int32)
    mask[1, :4] = 0  # left padding
    mask = jnp.asarray(mask)
    full = np.asarray(model(ids, attention_mask=mask))
    graphdef, params = nnx.split(layered)

    @jax.jit
    def run(params, ids, mask, cache):
        return nnx.merge(graphdef, params)(ids, mask, cache=cache)

    cache = LayerCache.init(model.config, batch=3, max_length=16)
    assert cache.k[0].shape == (3, 2, 16, 8)  # [B, K, S, H]: heads-major
    logits, cache = run(params, ids[:, :7], mask[:, :7], cache)
    steps = [np.asarray(logits)]
    for t in range(7, 12):
        logits, cache = run(params, ids[:, t:t + 1], mask[:, t:t + 1], cache)
        steps.append(np.asarray(logits))
    assert int(cache.index) == 12
    cached = np.concatenate(steps, axis=1)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(cached[real], full[real], atol=2e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_layered_decode_of_a_lora_model_merges_the_adapters(family):
    """A LoRA model (trained-looking, non-zero B on every target) decodes through the per-layer model
    with its adapters folded into the weights: the same logits as the adapter forward (fp32)."""
    from bsft_jax.models.lora import LoraConfig, LoraParam

    lora = LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "gate", "up", "down"))
    model = init_decoder(_config(lora=lora, **FAMILIES[family]), seed=2)
    rng = np.random.default_rng(3)
    for _, leaf in nnx.iter_graph(model):
        if isinstance(leaf, LoraParam):  # B starts at zero: give every factor a value that moves the output
            leaf.value = jnp.asarray(rng.normal(0, 0.2, leaf.value.shape), leaf.value.dtype)
    layered = unstack_layers(model)
    assert layered.config.lora is None
    assert not any(isinstance(leaf, LoraParam) for _, leaf in nnx.iter_graph(layered))
    ids = jnp.asarray(rng.integers(0, 64, (2, 10)), jnp.int32)
    full = np.asarray(model(ids))
    plain = np.asarray(init_decoder(_config(**FAMILIES[family]), seed=2)(ids))
    assert np.abs(full - plain).max() > 1e-2  # the adapters matter
    cache = LayerCache.init(layered.config, batch=2, max_length=10)
    cached, _ = layered(ids, cache=cache)
    np.testing.assert_allclose(np.asarray(cached), full, atol=5e-5, rtol=0)
