"""Sliding-window (Gemma 3) layers through the fused attention path: the kernel gets the window.

On CPU the cuDNN call runs through JAX's XLA lowering of the same ``jax.nn.dot_product_attention``
call (as in test_attention_impl.py); the ``gpu`` test compares real cuDNN with the einsum path.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import Decoder

WINDOW = 8
GEMMA_TINY = dict(model_type="gemma3_text", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=3,
                  num_heads=4, num_kv_heads=2, head_dim=16, activation="gelu_tanh", norm_plus_one=True,
                  post_norms=True, qk_norm=True, embed_scale=True, query_pre_attn_scalar=12.0,
                  layer_types=("sliding_attention", "full_attention", "sliding_attention"), sliding_window=WINDOW,
                  rope_theta=1e6, rope_local_theta=1e4, tie_word_embeddings=True)


def _batch(t: int = 24):
    ids = jax.random.randint(jax.random.key(1), (2, t), 0, 256)
    seg = jnp.concatenate([jnp.ones((2, t - 4), jnp.int32), jnp.zeros((2, 4), jnp.int32)], axis=1)
    return ids, seg


def test_sliding_layers_pass_the_window_to_the_fused_kernel(monkeypatch):
    import bsft_jax.models.attention as attention

    model = Decoder(DecoderConfig(**GEMMA_TINY), rngs=nnx.Rngs(0))
    ids, seg = _batch()
    ref = np.asarray(model(ids, segment_ids=seg))
    real, windows = attention.fused_attention, []

    def on_cpu(*args, implementation, **kw):
        windows.append(kw.get("local_window_size"))
        assert kw["scale"] == pytest.approx(12.0**-0.5)
        return real(*args, implementation="xla", **kw)

    monkeypatch.setattr(attention, "fused_attention", on_cpu)
    monkeypatch.setattr(attention, "resolve_attention_impl", lambda c: "cudnn")
    out = np.asarray(model(ids, segment_ids=seg))
    assert sorted(windows, key=str) == [(WINDOW - 1, 0), None]  # both branches of the per-layer cond, once
    valid = np.asarray(seg, bool)[:, :, None]
    np.testing.assert_allclose(np.where(valid, out, 0), np.where(valid, ref, 0), rtol=1e-5, atol=1e-5)

    # and the window is real: without it (every layer global) the logits past the window differ
    monkeypatch.setattr(attention, "fused_attention", real)
    monkeypatch.setattr(attention, "resolve_attention_impl", lambda c: "einsum")
    wide = Decoder(DecoderConfig(**{**GEMMA_TINY, "sliding_window": 1000}), rngs=nnx.Rngs(0))
    assert np.abs(np.asarray(wide(ids, segment_ids=seg)) - ref)[:, WINDOW:20].max() > 1e-4


@pytest.mark.gpu
def test_cudnn_sliding_window_matches_einsum_on_gpu():
    """bf16 logits and gradients of a sliding-window config: cuDNN (static window) vs the einsum path,
    with an attention scale 1/sqrt(query_pre_attn_scalar) that is not cuDNN's default 1/sqrt(head_dim)."""
    cfg = dict(GEMMA_TINY, num_heads=8, num_kv_heads=2, head_dim=64, hidden_size=256, sliding_window=32,
               query_pre_attn_scalar=48.0, dtype="bfloat16")
    assert DecoderConfig(**cfg).attention_scale != 64.0**-0.5
    einsum = Decoder(DecoderConfig(**cfg, attention_impl="einsum"), rngs=nnx.Rngs(0))
    cudnn = Decoder(DecoderConfig(**cfg, attention_impl="cudnn"), rngs=nnx.Rngs(0))
    ids, seg = _batch(128)

    def loss(m):
        logits = m(ids, segment_ids=seg).astype(jnp.float32)
        return jnp.sum(jnp.where(seg[..., None] > 0, logits, 0.0) ** 2) * 1e-4

    (l_ref, g_ref), (l_cu, g_cu) = nnx.value_and_grad(loss)(einsum), nnx.value_and_grad(loss)(cudnn)
    np.testing.assert_allclose(l_cu, l_ref, rtol=2e-2)
    for a, b in zip(jax.tree.leaves(g_cu), jax.tree.leaves(g_ref), strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.linalg.norm(a - b) <= 5e-2 * np.linalg.norm(b) + 1e-6
