"""The chunked / gathered loss equals the full-logits loss (sums and gradients) and uses less memory.

Tolerances (fp32): sums rtol 1e-5, gradients atol 1e-6 relative to their scale (seen: ~1e-7; the
chunks sum in another order). The accuracy counts must be equal exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bsft_jax.models import DecoderConfig
from bsft_jax.models.decoder import init_decoder
from bsft_jax.train.chunked_loss import budget_rows, chunked_loss_sums, model_loss_sums
from bsft_jax.train.loss import objective

B, T = 3, 16


def _config(**kw) -> DecoderConfig:
    base = dict(model_type="qwen2", vocab_size=96, valid_vocab_size=90, hidden_size=32, intermediate_size=64,
                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True)
    base.update(kw)
    return DecoderConfig(**base)


def _batch(mask_fraction: float, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 90, (B, T))
    segment_ids = np.ones((B, T), np.int32)
    segment_ids[0, 10:] = 2  # a packed second sequence
    segment_ids[2, 12:] = 0  # right padding
    loss_mask = (rng.random((B, T)) < mask_fraction).astype(np.int32) * (segment_ids != 0)
    positions = np.tile(np.arange(T), (B, 1))
    return {k: jnp.asarray(v, jnp.int32) for k, v in dict(
        tokens=tokens, targets=rng.integers(0, 90, (B, T)), loss_mask=loss_mask, segment_ids=segment_ids,
        positions=positions).items()}


def _loss_and_grads(model, batch, **options):
    graphdef, params = nnx.split(model)

    def f(p):
        sums = model_loss_sums(nnx.merge(graphdef, p), batch, **options)
        return objective(sums, sums.tokens, 1e-2), sums  # z-loss on

    (value, sums), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    return float(value), jax.device_get(sums), jax.device_get(nnx.to_pure_dict(grads))


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize(("chunk", "budget", "mask_fraction"), [
    (16, 1.0, 0.5),   # chunked over all positions
    (7, 1.0, 0.5),    # a chunk that does not divide B * T (padded rows)
    (8, 0.5, 0.2),    # gathered: the masked tokens fit the budget
    (8, 0.25, 0.9),   # more masked tokens than the budget: the exact fallback
])
def test_chunked_equals_full_with_gradients(tie, chunk, budget, mask_fraction):
    model = init_decoder(_config(tie_word_embeddings=tie), seed=1)
    # Padded rows with large logits: they would dominate the softmax if they were not masked.
    head = model.embed if tie else model.lm_head
    if tie:
        head.value = head.value.at[90:].set(0.5)
    else:
        head.value = head.value.at[:, 90:].set(0.5)
    batch = _batch(mask_fraction)
    ref_value, ref, ref_grads = _loss_and_grads(model, batch, impl="full")
    value, sums, grads = _loss_and_grads(model, batch, impl="chunked", chunk=chunk, budget=budget)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for name in ("ce", "z", "tokens"):
        np.testing.assert_allclose(getattr(sums, name), getattr(ref, name), rtol=1e-5)
    for name in ("correct", "first_correct", "first_tokens"):
        assert float(getattr(sums, name)) == float(getattr(ref, name)), name
    flat_ref, flat = jax.tree.leaves(ref_grads), jax.tree.leaves(grads)
    assert len(flat) == len(flat_ref)
    for g, r in zip(flat, flat_ref, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-6 * max(1.0, float(np.abs(r).max())), rtol=1e-4)


GEMMA3_TINY = dict(model_type="gemma3_text", qkv_bias=False, norm_plus_one=True, post_norms=True, qk_norm=True,
                   activation="gelu_tanh", query_pre_attn_scalar=16.0, embed_scale=True,
                   layer_types=("sliding_attention", "full_attention"), sliding_window=4, rope_local_theta=1e4)


@pytest.mark.parametrize("tie", [True, False])
def test_chunked_equals_full_on_gemma3_tiny(tie):
    """Gemma 3's scaled embedding (tied: the raw table is the head) and its norms/GeGLU: same loss, same grads."""
    model = init_decoder(_config(tie_word_embeddings=tie, **GEMMA3_TINY), seed=2)
    batch = _batch(0.5, seed=3)
    ref_value, ref, ref_grads = _loss_and_grads(model, batch, impl="full")
    value, sums, grads = _loss_and_grads(model, batch, impl="chunked", chunk=8, budget=0.75)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(sums.ce, ref.ce, rtol=1e-5)
    assert float(sums.correct) == float(ref.correct)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, r, atol=1e-6 * max(1.0, float(np.abs(r).max())), rtol=1e-4)


def test_fallback_is_taken_only_when_the_budget_overflows():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(2, 8, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, (2, 8)), jnp.int32)
    seg = jnp.ones((2, 8), jnp.int32)
    # Budget of 4 rows; 6 masked tokens: every one must still be counted (fallback).
    mask = jnp.zeros((2, 8), jnp.int32).at[0, :6].set(1)
    s = chunked_loss_sums(hidden, w, targets, mask, seg, chunk=4, budget=0.25)
    assert budget_rows(16, 0.25, 4) == 4
    assert float(s.tokens) == 6.0
    logits = np.einsum("btd,dv->btv", np.asarray(hidden, np.float64), np.asarray(w, np.float64))
    lse = np.log(np.exp(logits).sum(-1))
    ce = lse - np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(s.ce), (ce * np.asarray(mask)).sum(), rtol=1e-5)


def _temp_bytes(config, **options) -> int:
    model = init_decoder(config, seed=0)
    graphdef, params = nnx.split(model)
    batch = _batch(0.2)
    batch = {k: jnp.tile(v, (2, 4)) for k, v in batch.items()}  # [6, 64]

    def f(p):
        sums = model_loss_sums(nnx.merge(graphdef, p), batch, **options)
        return objective(sums, sums.tokens, 1e-4)

    return jax.jit(jax.grad(f)).lower(params).compile().memory_analysis().temp_size_in_bytes


def test_compiled_temp_memory_is_smaller_for_a_large_vocab():
    config = _config(vocab_size=32_768, valid_vocab_size=32_000, tie_word_embeddings=True, num_layers=1)
    full = _temp_bytes(config, impl="full")
    chunked = _temp_bytes(config, impl="chunked", chunk=64, budget=1.0)
    gathered = _temp_bytes(config, impl="chunked", chunk=64, budget=0.25)
    logits_bytes = 6 * 64 * 32_768 * 4
    assert full > 2 * logits_bytes  # the full path keeps [B, T, V] logits and their gradient
    assert chunked < full / 2, (chunked, full)
    assert gathered < full / 2, (gathered, full)


def test_settings_know_the_same_loss_impls():
    from bsft_jax.setup.settings import LOSS_IMPLS as SETTINGS_IMPLS
    from bsft_jax.train.chunked_loss import LOSS_IMPLS

    assert SETTINGS_IMPLS == LOSS_IMPLS
