"""Trainable rows over a frozen table: the same outputs and gradients as the rows scattered into it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bsft_jax.models.decoder import Decoder, init_decoder
from bsft_jax.models.layers import PatchedColumns, project
from tests.models.test_lora import _config

IDS = (3, 7, 60)


def test_patched_columns_project_as_the_scattered_weight():
    rng = np.random.RandomState(0)
    x, base, cols = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((2, 5, 8), (8, 64), (8, 3)))
    g = jnp.asarray(rng.normal(size=(2, 5, 64)), jnp.float32)

    def patched(x, base, cols):
        return jnp.sum(project(x, PatchedColumns(base=base, cols=cols, ids=IDS)) * g)

    def scattered(x, base, cols):
        return jnp.sum(project(x, base.at[:, np.asarray(IDS)].set(cols)) * g)

    # the R columns come from their own small matmul: equal to fp32 rounding
    np.testing.assert_allclose(project(x, PatchedColumns(base=base, cols=cols, ids=IDS)),
                               project(x, base.at[:, np.asarray(IDS)].set(cols)), rtol=1e-6, atol=1e-6)
    got, ref = jax.grad(patched, (0, 2))(x, base, cols), jax.grad(scattered, (0, 2))(x, base, cols)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.asarray(jax.grad(patched, 1)(x, base, cols)).any()  # the base is frozen


def test_patched_columns_bf16_operands_fp32_logits_in_a_scan():
    """bf16 hidden states and head, fp32 logits, inside a scan (the chunked loss's shape): XLA:CPU has no
    bf16 x bf16 -> f32 kernel for the thin column dot and failed here; the patched product must equal
    the scattered weight's, forward and backward."""
    rng = np.random.RandomState(1)
    x, base, cols = (jnp.asarray(rng.normal(size=s), jnp.bfloat16) for s in ((4, 6, 8), (8, 64), (8, 3)))

    def total(w_of, x, cols):
        def body(carry, x_td):
            return carry + jnp.sum(jnp.tanh(project(x_td, w_of(cols), 1, jnp.float32))), None
        return jax.lax.scan(body, jnp.float32(0), x)[0]

    def patched(x, cols):
        return total(lambda c: PatchedColumns(base=base, cols=c, ids=IDS), x, cols)

    def scattered(x, cols):
        return total(lambda c: base.at[:, np.asarray(IDS)].set(c), x, cols)

    np.testing.assert_allclose(jax.jit(patched)(x, cols), jax.jit(scattered)(x, cols), rtol=1e-5)
    got, ref = jax.grad(patched, (0, 1))(x, cols), jax.grad(scattered, (0, 1))(x, cols)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("tie", [True, False])
def test_decoder_with_trainable_rows_is_the_decoder_with_rows_scattered_in(tie):
    config, ids = _config(tie_word_embeddings=tie), np.asarray(IDS)
    model = Decoder(config, rngs=nnx.Rngs(params=1), trainable_rows=IDS)  # the rows come after every base weight
    merged = init_decoder(config, seed=1)
    rng = np.random.RandomState(2)
    model.rows.embed.value = jnp.asarray(rng.normal(size=(3, config.hidden_size)), jnp.float32)
    merged.embed.value = merged.embed.value.at[ids].set(model.rows.embed.value)
    if not tie:
        model.rows.lm_head.value = jnp.asarray(rng.normal(size=(config.hidden_size, 3)), jnp.float32)
        merged.lm_head.value = merged.lm_head.value.at[:, ids].set(model.rows.lm_head.value)
    tokens = jnp.asarray([[3, 5, 7, 60, 1, 3, 0]])
    np.testing.assert_array_equal(np.asarray(model.embed_tokens(tokens)), np.asarray(merged.embed_tokens(tokens)))
    np.testing.assert_allclose(np.asarray(model(tokens)), np.asarray(merged(tokens)), rtol=1e-5, atol=1e-5)
