"""Loss sums against a naive full-softmax reference; schedule and weight-decay mask."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bsft_jax.models import DecoderConfig
from bsft_jax.models.decoder import abstract_decoder
from bsft_jax.setup.config import default_config
from bsft_jax.train.loss import first_target_mask, loss_sums, objective
from bsft_jax.train.optim import decays, learning_rate_schedule, make_optimizer, weight_decay_mask


def _naive(logits, targets, mask, valid):
    """Reference in float64 numpy: softmax over the valid rows only."""
    lg = np.asarray(logits, np.float64)[..., :valid]
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    ce = lse - np.take_along_axis(lg, targets[..., None], -1)[..., 0]
    return (ce * mask).sum(), (lse ** 2 * mask).sum(), ((lg.argmax(-1) == targets) * mask).sum()


def test_loss_sums_match_naive_reference_with_padded_vocab():
    rng = np.random.default_rng(0)
    b, t, v, valid = 3, 7, 40, 33
    logits = rng.normal(size=(b, t, v)).astype(np.float32) * 3
    logits[..., valid:] = 50.0  # padded rows would dominate if they were not masked
    targets = rng.integers(0, valid, (b, t))
    mask = (rng.random((b, t)) < 0.6).astype(np.int32)
    seg = np.ones((b, t), np.int32)
    s = loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), jnp.asarray(seg),
                  valid_vocab_size=valid)
    ce, z, correct = _naive(logits, targets, mask, valid)
    np.testing.assert_allclose(float(s.ce), ce, rtol=1e-5)
    np.testing.assert_allclose(float(s.z), z, rtol=1e-5)
    assert float(s.tokens) == mask.sum()
    assert float(s.correct) == correct
    np.testing.assert_allclose(float(objective(s, s.tokens, 0.0)), ce / mask.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(objective(s, s.tokens, 1e-3)), (ce + 1e-3 * z) / mask.sum(), rtol=1e-5)


def test_first_token_weight_scales_the_gradient_only_at_first_reply_tokens():
    """d objective / d logits by hand: (softmax - onehot) * weight / tokens, weight w at span starts."""
    rng = np.random.default_rng(3)
    b, t, v, w = 2, 9, 11, 7.0
    logits = rng.normal(size=(b, t, v)).astype(np.float32)
    targets = rng.integers(0, v, (b, t))
    mask = np.array([[0, 0, 1, 1, 1, 0, 1, 1, 0], [0, 1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
    seg = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
    first = np.zeros((b, t), bool)
    first[0, 2] = first[0, 6] = first[1, 1] = True  # the first target of each reply

    def grad(weight):
        def f(lg):
            s = loss_sums(lg, jnp.asarray(targets), jnp.asarray(mask), jnp.asarray(seg))
            return objective(s, s.tokens, 0.0, weight)
        return np.asarray(jax.grad(f)(jnp.asarray(logits)))

    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(v)[targets]
    per_token = np.where(first, w, 1.0) * mask
    by_hand = (p - onehot) * per_token[..., None] / mask.sum()
    np.testing.assert_allclose(grad(w), by_hand, atol=1e-6)
    g1, gw = grad(1.0), grad(w)
    np.testing.assert_allclose(gw[~first], g1[~first], atol=1e-7)  # every other position: unchanged
    np.testing.assert_allclose(gw[first], w * g1[first], rtol=1e-5)
    s = loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), jnp.asarray(seg))
    ce_first = -np.log(np.take_along_axis(p, targets[..., None], -1)[..., 0])[first].sum()
    np.testing.assert_allclose(float(s.first_ce), ce_first, rtol=1e-5)


def test_loss_is_computed_in_fp32_from_bf16_logits():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 16)), jnp.bfloat16)
    targets = jnp.zeros((2, 5), jnp.int32)
    ones = jnp.ones((2, 5), jnp.int32)
    s = loss_sums(logits, targets, ones, ones)
    ce, _, _ = _naive(np.asarray(logits.astype(jnp.float32)), np.zeros((2, 5), int), np.ones((2, 5)), 16)
    assert s.ce.dtype == jnp.float32
    np.testing.assert_allclose(float(s.ce), ce, rtol=1e-6)


def test_first_target_mask_marks_each_assistant_span_start():
    loss_mask = np.array([[0, 1, 1, 0, 0, 1, 1, 1, 0, 0]])
    segments = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 0, 0]])
    # the span starting at 5 begins a new masked run; a run continuing across segments would restart
    assert np.asarray(first_target_mask(loss_mask, segments)).astype(int).tolist() == [[0, 1, 0, 0, 0, 1, 0, 0, 0, 0]]
    across = np.array([[0, 1, 1, 1, 1]]), np.array([[1, 1, 1, 2, 2]])
    assert np.asarray(first_target_mask(*across)).astype(int).tolist() == [[0, 1, 0, 1, 0]]


def test_schedule_warmup_then_cosine_to_floor():
    sched = learning_rate_schedule(1.0, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [float(sched(i)) for i in range(0, 130)]
    np.testing.assert_allclose(lrs[:10], [(i + 1) / 10 for i in range(10)], rtol=1e-6)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)  # half way through the cosine
    assert all(a >= b - 1e-7 for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[110] == pytest.approx(0.1) and lrs[129] == pytest.approx(0.1)


def test_schedule_decay_start_holds_peak_then_decays_like_a_branch():
    """Warmup-stable-decay: the constant phase is exactly the constant-rate schedule (a branch can resume
    from any of its checkpoints), and the cosine runs over [decay_start, total_steps) only."""
    wsd = learning_rate_schedule(1.0, total_steps=200, warmup_steps=10, min_lr_ratio=0.0, decay_start=100)
    const = learning_rate_schedule(1.0, total_steps=100, warmup_steps=10, min_lr_ratio=1.0)
    lrs = [float(wsd(i)) for i in range(220)]
    np.testing.assert_allclose(lrs[:101], [float(const(i)) for i in range(101)], rtol=1e-6)
    assert lrs[150] == pytest.approx(0.5, rel=1e-5) and lrs[200] == pytest.approx(0.0, abs=1e-7)
    assert all(a >= b - 1e-7 for a, b in itertools.pairwise(lrs[100:]))
    # decay_start at or before warmup is the plain schedule
    plain = learning_rate_schedule(1.0, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    early = learning_rate_schedule(1.0, total_steps=110, warmup_steps=10, min_lr_ratio=0.1, decay_start=5)
    assert [float(plain(i)) for i in range(120)] == [float(early(i)) for i in range(120)]


def test_decay_start_is_validated():
    from bsft_jax.setup.config import validate_config
    from bsft_jax.setup.settings import ConfigError

    c = default_config()
    c.run_dir, c.model.source, c.tokenizer.path = "runs/unused", "scratch", "demo"
    c.train.steps, c.optimizer.warmup_steps, c.optimizer.decay_start = 50, 5, 50
    with pytest.raises(ConfigError, match="optimizer.decay_start"):
        validate_config(c, num_devices=1)
    c.optimizer.decay_start = -1
    with pytest.raises(ConfigError, match="optimizer.decay_start"):
        validate_config(c, num_devices=1)
    c.optimizer.decay_start = 40
    validate_config(c, num_devices=1)


def test_weight_decay_mask_by_name_not_rank():
    config = DecoderConfig(model_type="qwen2", vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2,
                           num_heads=2, num_kv_heads=1, head_dim=8, qkv_bias=True)
    from flax import nnx

    params = nnx.state(abstract_decoder(config), nnx.Param)
    mask = nnx.to_pure_dict(weight_decay_mask(params))
    assert mask["layers"]["attn"]["q_proj"] and mask["layers"]["mlp"]["down_proj"] and mask["lm_head"]
    # stacked norm scales are rank 2 and stacked biases rank 3, yet never decayed
    assert not mask["layers"]["input_norm"]["scale"] and not mask["layers"]["attn"]["q_bias"]
    assert not mask["final_norm"]["scale"] and not mask["embed"]
    assert decays("embed", decay_embeddings=True)


def test_weight_decay_applies_only_where_masked():
    opt = default_config().optimizer
    opt.learning_rate, opt.warmup_steps, opt.weight_decay, opt.grad_clip_norm = 0.1, 0, 0.5, 0.0
    tx, _ = make_optimizer(opt, 10)
    params = {"q_proj": jnp.ones((2, 2)), "scale": jnp.ones((2, 2))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["q_proj"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)  # decoupled decay
    np.testing.assert_allclose(updates["scale"], 0.0)


def _adam_reference(grads, b1, b2, eps, lr):
    """Plain numpy Adam (bias-corrected), no decay: the update of each step."""
    m = v = np.zeros_like(grads[0])
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        out.append(-lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
    return out


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_global_norm_clipping(clip):
    opt = default_config().optimizer
    opt.learning_rate, opt.warmup_steps, opt.weight_decay, opt.grad_clip_norm = 1.0, 0, 0.0, clip
    opt.min_lr_ratio = 1.0  # constant lr
    tx, _ = make_optimizer(opt, 10)
    # A huge first gradient then a small one: with clipping the first is scaled to norm 1 before it
    # enters Adam's second moment, which changes the size of the second update by orders of magnitude.
    grads = [np.asarray([3e5, 4e5], np.float32), np.asarray([3e-3, -4e-3], np.float32)]
    clipped = [g * min(1.0, clip / np.linalg.norm(g)) if clip > 0 else g for g in grads]
    expected = _adam_reference(clipped, opt.b1, opt.b2, opt.eps, 1.0)
    params = {"q_proj": jnp.zeros(2)}
    state = tx.init(params)
    for g, want in zip(grads, expected):
        u, state = tx.update({"q_proj": jnp.asarray(g)}, state, params)
        np.testing.assert_allclose(np.asarray(u["q_proj"]), want, rtol=1e-4)
