"""Numerical parity of the NNX decoder with transformers, padding, packing and the KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bsft_jax import KVCache, load_hf
from tests.helpers import padded_batch, save_tiny, torch_logits

VARIANTS = [("qwen2", True), ("qwen2", False), ("llama", False), ("llama", True)]


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}-{'tied' if v[1] else 'untied'}")
def tiny(request, tmp_path_factory):
    kind, tie = request.param
    folder, ref = save_tiny(tmp_path_factory.mktemp(kind), kind, tie=tie)
    return folder, ref


def test_fp32_logits_match_transformers_on_padded_batch(tiny):
    folder, ref = tiny
    ids, mask, pos = padded_batch()
    expected = torch_logits(ref, ids, mask, pos)
    model, config = load_hf(folder)
    got = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))  # default positions: cumsum
    assert got.dtype == np.float32 and got.shape == expected.shape
    real = mask.astype(bool)
    assert np.abs(got - expected)[real].max() <= 1e-4
    # explicit positions give the same thing
    got2 = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask), positions=jnp.asarray(pos)))
    np.testing.assert_array_equal(got, got2)


def test_bf16_stays_close_to_transformers_bf16(tiny):
    """Measured on these tiny models: max |diff| ~4e-3 vs transformers bf16 (logits up to ~1.4), the same
    size as transformers' own bf16-vs-fp32 error (~3.7e-3). Asserted: <= 1e-2, and our bf16 error
    against fp32 is at most twice transformers' bf16 error."""
    folder, ref = tiny
    ids, mask, pos = padded_batch()
    expected_bf16 = torch_logits(ref.to(torch.bfloat16), ids, mask, pos)
    expected_fp32 = torch_logits(ref.float(), ids, mask, pos)
    model, _ = load_hf(folder, dtype="bfloat16")
    got = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    real = mask.astype(bool)
    assert np.abs(got - expected_bf16)[real].max() <= 1e-2
    hf_bf16_error = np.abs(expected_bf16 - expected_fp32)[real].max()
    assert np.abs(got - expected_fp32)[real].max() <= 2 * hf_bf16_error
    # and bf16 is genuinely different from fp32 (the dtype reached the matmuls)
    assert np.abs(got - expected_fp32)[real].max() > 1e-5


def test_jit_matches_eager(tiny):
    from flax import nnx

    folder, _ = tiny
    ids, mask, _ = padded_batch()
    model, _ = load_hf(folder)
    eager = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    jitted = nnx.jit(lambda m, i, a: m(i, attention_mask=a))(model, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)


def test_packed_segments_equal_separate_rows(tiny):
    """Two sequences packed in one row (segment_ids, restarting positions) == each on its own."""
    folder, _ = tiny
    model, _ = load_hf(folder)
    rng = np.random.RandomState(1)
    a, b = rng.randint(0, 256, 7), rng.randint(0, 256, 5)
    packed = np.concatenate([a, b, [0, 0]])[None]
    seg = np.array([[1] * 7 + [2] * 5 + [0, 0]])
    out = np.asarray(model(jnp.asarray(packed), segment_ids=jnp.asarray(seg)))[0]
    sep_a = np.asarray(model(jnp.asarray(a[None])))[0]
    sep_b = np.asarray(model(jnp.asarray(b[None])))[0]
    np.testing.assert_allclose(out[:7], sep_a, atol=1e-5)
    np.testing.assert_allclose(out[7:12], sep_b, atol=1e-5)


def test_kv_cache_decode_equals_full_forward(tiny):
    """Prefill + one-token steps through the cache give the full forward's logits (fp32, 1e-5)."""
    folder, _ = tiny
    model, config = load_hf(folder)
    ids, mask, _ = padded_batch()
    mask = np.ones_like(mask)
    mask[1, :4] = 0  # left padding only (a cache holds one left-padded sequence per row)
    full = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    cache = KVCache.init(config, batch=3, max_length=16)
    logits, cache = model(jnp.asarray(ids[:, :7]), attention_mask=jnp.asarray(mask[:, :7]), cache=cache)
    steps = [np.asarray(logits)]
    for t in range(7, 12):
        logits, cache = model(jnp.asarray(ids[:, t : t + 1]), attention_mask=jnp.asarray(mask[:, t : t + 1]),
                              cache=cache)
        steps.append(np.asarray(logits))
    assert int(cache.index) == 12
    real = mask.astype(bool)
    assert np.abs(np.concatenate(steps, axis=1) - full)[real].max() <= 1e-5


def test_sharded_load_matches_single_device(tiny):
    from bsft_jax.models.sharding import make_mesh

    folder, _ = tiny
    ids, mask, _ = padded_batch()
    single, _ = load_hf(folder)
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    with jax.set_mesh(mesh):
        sharded, _ = load_hf(folder, mesh=mesh)
        q = sharded.layers.attn.q_proj.value
        assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
        assert len(q.sharding.device_set) == 8
        out = jax.jit(lambda i, a: sharded(i, attention_mask=a))(jnp.asarray(ids), jnp.asarray(mask))
    expected = np.asarray(single(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)


@pytest.mark.parametrize("n_in, dtype, out_dtype", [(1, jnp.float32, None), (2, jnp.float32, None),
                                                     (1, jnp.bfloat16, jnp.float32), (1, jnp.bfloat16, None)])
def test_project_matches_einsum_value_and_gradients(n_in, dtype, out_dtype):
    # project() only reorders the weight-gradient dot (a CPU layout fix): values, gradients and
    # their dtypes must equal plain einsum's. fp32 to 1e-5 (summation order), bf16 to 1e-2 relative.
    from bsft_jax.models.decoder import project

    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x_shape, w_shape = ((2, 5, 4, 3), (4, 3, 6)) if n_in == 2 else ((2, 5, 4), (4, 3, 6))
    x = jax.random.normal(kx, x_shape, dtype)
    w = jax.random.normal(kw, w_shape, dtype)
    spec = "btnh,nhd->btd" if n_in == 2 else "btd,dkh->btkh"

    def reference(x, w):
        return jnp.einsum(spec, x, w, preferred_element_type=out_dtype)

    def ours(x, w):
        return project(x, w, n_in, out_dtype)

    y_ref, vjp_ref = jax.vjp(reference, x, w)
    y, vjp = jax.vjp(ours, x, w)
    g = jax.random.normal(kg, y.shape, y.dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=1e-2, atol=1e-2)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32), **tol)
    for ours_grad, ref_grad in zip(vjp(g), vjp_ref(g)):
        assert ours_grad.dtype == ref_grad.dtype and ours_grad.shape == ref_grad.shape
        np.testing.assert_allclose(np.asarray(ours_grad, np.float32), np.asarray(ref_grad, np.float32), **tol)


def test_scan_unroll_gives_the_same_logits_gradients_and_cache(tiny):
    """scan_unroll only changes how the layer loop is compiled: logits, gradients and cached decode equal
    the scanned model's (fp32; 1e-5: XLA may fuse the unrolled layers differently)."""
    folder, _ = tiny
    model, config = load_hf(folder)
    ids, mask, _ = padded_batch()
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    unrolled, _ = load_hf(folder, scan_unroll=config.num_layers)
    assert unrolled.config.scan_unroll == config.num_layers and config.scan_unroll == 1

    def loss(m):
        return jnp.sum(m(ids, attention_mask=mask) ** 2) * 1e-3

    from flax import nnx

    grads, grads_unrolled = nnx.grad(loss)(model), nnx.grad(loss)(unrolled)
    np.testing.assert_allclose(unrolled(ids, attention_mask=mask), model(ids, attention_mask=mask), atol=1e-5)
    for g_unrolled, g in zip(jax.tree.leaves(grads_unrolled), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(g_unrolled, g, rtol=1e-5, atol=1e-6)
    left = jnp.ones_like(mask)
    outs = [m(ids[:, :6], attention_mask=left[:, :6], cache=KVCache.init(config, batch=3, max_length=8))[0]
            for m in (model, unrolled)]
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)
