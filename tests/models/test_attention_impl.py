"""DecoderConfig.attention_impl: the fused (cuDNN) attention path, its wiring, selection and validation.

cuDNN itself only runs on a GPU (the ``gpu`` test); on CPU the same ``fused_attention`` call runs
through JAX's reference lowering, so the head grouping, mask and causal flag are checked here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bsft_jax import load_hf
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import Decoder, dot_product_attention, fused_attention, resolve_attention_impl
from bsft_jax.setup.config import ConfigError, default_config, validate_config
from tests.helpers import padded_batch, save_tiny

ARCH = dict(model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16, qkv_bias=True)


def _packed_padded_mask(segment_ids_bt: np.ndarray) -> jnp.ndarray:
    seg = jnp.asarray(segment_ids_bt)
    t = seg.shape[1]
    causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]
    return (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0) & causal[None]


def test_fused_attention_matches_the_einsum_path_on_packed_and_padded_rows():
    """Same outputs and input gradients as dot_product_attention (GQA, two packed segments, padding)."""
    b, t, k, g, h = 2, 10, 2, 3, 8
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (b, t, k * g, h))
    kk = jax.random.normal(keys[1], (b, t, k, h))
    v = jax.random.normal(keys[2], (b, t, k, h))
    mask = _packed_padded_mask(np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 0], [1] * 7 + [0] * 3]))
    valid = (np.array([[1] * 9 + [0], [1] * 7 + [0] * 3]) > 0)[:, :, None, None]

    def einsum_path(q, kk, v):
        return dot_product_attention(q.reshape(b, t, k, g, h), kk, v, mask).reshape(b, t, k * g, h)

    def fused_path(q, kk, v):
        return fused_attention(q, kk, v, mask, implementation="xla")

    ref, ours = einsum_path(q, kk, v), fused_path(q, kk, v)
    # Padding rows (no valid key) are garbage in both, but must be finite.
    assert np.isfinite(np.asarray(ours)).all()
    np.testing.assert_allclose(np.where(valid, ours, 0), np.where(valid, ref, 0), rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(keys[3], ref.shape) * valid
    grads_ref = jax.vjp(einsum_path, q, kk, v)[1](cot)
    grads = jax.vjp(fused_path, q, kk, v)[1](cot)
    for ours_g, ref_g in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(ours_g, ref_g, rtol=1e-4, atol=1e-5)


def test_decoder_with_the_fused_path_matches_einsum(monkeypatch, tmp_path):
    """A whole decoder forward with attention routed through fused_attention equals the einsum model."""
    import bsft_jax.models.attention as attention

    folder, _ = save_tiny(tmp_path, "qwen2", tie=True)
    model, config = load_hf(folder)
    ids, mask, _ = padded_batch()
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    ref = model(ids, attention_mask=mask)
    real = attention.fused_attention
    calls = []

    def on_cpu(*args, implementation):
        calls.append(implementation)
        return real(*args, implementation="xla")

    monkeypatch.setattr(attention, "fused_attention", on_cpu)
    monkeypatch.setattr(attention, "resolve_attention_impl", lambda c: "cudnn")
    out = model(ids, attention_mask=mask)
    assert calls == ["cudnn"]  # one scanned block traced once
    valid = np.asarray(mask, bool)[:, :, None]
    np.testing.assert_allclose(np.where(valid, out, 0), np.where(valid, ref, 0), rtol=1e-5, atol=1e-5)


def test_auto_picks_cudnn_only_on_gpu_for_bf16():
    on_gpu = jax.default_backend() == "gpu"
    bf16 = DecoderConfig(**ARCH, attention_impl="auto", dtype="bfloat16")
    assert resolve_attention_impl(bf16) == ("cudnn" if on_gpu else "einsum")
    assert resolve_attention_impl(DecoderConfig(**ARCH, attention_impl="auto")) == "einsum"  # fp32
    assert resolve_attention_impl(DecoderConfig(**ARCH, attention_impl="einsum", dtype="bfloat16")) == "einsum"
    assert DecoderConfig(**ARCH).attention_impl == "auto" and default_config().model.attention_impl == "auto"


def test_attention_impl_validation():
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        DecoderConfig(**ARCH, attention_impl="flash")
    with pytest.raises(ValueError, match="needs dtype bfloat16/float16"):
        DecoderConfig(**ARCH, attention_impl="cudnn")  # fp32 compute
    with pytest.raises(ValueError, match="head_dim <= 128"):
        DecoderConfig(**{**ARCH, "head_dim": 256}, attention_impl="cudnn", dtype="bfloat16")
    DecoderConfig(**ARCH, attention_impl="cudnn", dtype="bfloat16")  # accepted (runs on GPU)


@pytest.mark.parametrize("impl, dtype, message", [
    ("flash", "bfloat16", "config.model.attention_impl: 'flash' is not one of"),
    ("cudnn", "float32", "config.model.attention_impl: is 'cudnn' but model.dtype='float32'"),
])
def test_run_config_names_the_attention_field(impl, dtype, message):
    cfg = default_config()
    cfg.run_dir = "runs/x"
    cfg.model.attention_impl, cfg.model.dtype = impl, dtype
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg, num_devices=1, num_processes=1)


@pytest.mark.gpu
def test_cudnn_attention_matches_einsum_on_gpu():
    """On a GPU: bf16 decoder logits and gradients through cuDNN flash attention vs the einsum path."""
    cfg = dict(ARCH, num_heads=8, num_kv_heads=2, head_dim=64, hidden_size=256, dtype="bfloat16")
    einsum = Decoder(DecoderConfig(**cfg), rngs=nnx.Rngs(0))
    cudnn = Decoder(DecoderConfig(**cfg, attention_impl="cudnn"), rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(1), (2, 128), 0, 256)
    seg = jnp.concatenate([jnp.ones((2, 60), jnp.int32), 2 * jnp.ones((2, 60), jnp.int32),
                           jnp.zeros((2, 8), jnp.int32)], axis=1)

    def loss(m):
        logits = m(ids, segment_ids=seg).astype(jnp.float32)
        return jnp.sum(jnp.where(seg[..., None] > 0, logits, 0.0) ** 2) * 1e-4

    (l_ref, g_ref), (l_cu, g_cu) = nnx.value_and_grad(loss)(einsum), nnx.value_and_grad(loss)(cudnn)
    np.testing.assert_allclose(l_cu, l_ref, rtol=2e-2)
    for a, b in zip(jax.tree.leaves(g_cu), jax.tree.leaves(g_ref), strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.linalg.norm(a - b) <= 5e-2 * np.linalg.norm(b) + 1e-6

