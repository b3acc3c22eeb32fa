"""KV-cache generation: parity with transformers, cache == full forward, EOS, sampling, steering,
bucketing (compile counts) and sharding on 8 fake CPU devices."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from bsft_jax.decode.batching import bucket_size
from bsft_jax.decode.loop import decode_loop, prefill
from bsft_jax.decode.sampler import Sampler, generate
from bsft_jax.decode.sampling import SamplingParams, sample_logits
from bsft_jax.models.hf import load_hf
from bsft_jax.models.sharding import make_mesh
from tests.helpers import save_tiny

VOCAB = 256
# Ragged prompts (lengths 3, 11, 6, 1); ids stay below the tiny models' EOS/BOS ids.
PROMPTS = [[5, 17, 42], [9, 8, 7, 6, 5, 4, 3, 2, 1, 100, 200], [33, 66, 99, 132, 165, 198], [77]]
# Cached-decode logits vs a full forward pass over the same tokens (fp32, different op order).
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """kind -> (folder, torch model) for tiny random Qwen2 and Llama checkpoints."""
    root = tmp_path_factory.mktemp("decode")
    return {kind: save_tiny(root, kind) for kind in ("qwen2", "llama")}


@pytest.fixture(scope="module")
def qwen(tiny):
    model, config = load_hf(tiny["qwen2"][0])
    return model, config


def _hf_greedy(torch_model, prompt, max_new_tokens, eos_ids):
    with torch.no_grad():
        out = torch_model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=list(eos_ids), pad_token_id=0,
        )
    return out[0, len(prompt):].tolist()


def _truncate(row, eos):
    for i, tok in enumerate(row):
        if tok in eos:
            return row[: i + 1]
    return row


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_greedy_matches_transformers(tiny, kind):
    folder, torch_model = tiny[kind]
    model, config = load_hf(folder)
    eos = config.stop_token_ids
    ours = generate(model, PROMPTS, max_new_tokens=8, eos_ids=eos)
    theirs = [_hf_greedy(torch_model, p, 8, eos) for p in PROMPTS]
    assert ours == theirs


def test_cached_logits_equal_full_forward(tiny):
    # valid_vocab_size < vocab_size: the last 6 rows are padding and must never be generated.
    model, _ = load_hf(tiny["qwen2"][0], valid_vocab_size=VOCAB - 6)
    out = Sampler(model)(PROMPTS, max_new_tokens=8, keep_logits=True)
    # One full (uncached) forward over prompt + generated tokens, right-padded into one batch.
    seqs = [p + t[:-1] for p, t in zip(PROMPTS, out.tokens)]
    ids_bt = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    mask_bt = np.zeros_like(ids_bt)
    for i, seq in enumerate(seqs):
        ids_bt[i, : len(seq)], mask_bt[i, : len(seq)] = seq, 1
    full_btv = np.asarray(model(ids_bt, attention_mask=mask_bt))
    worst = 0.0
    for prompt, tokens, logits_nv, logprobs, full in zip(PROMPTS, out.tokens, out.logits, out.logprobs, full_btv):
        assert len(tokens) == 8 and max(tokens) < VOCAB - 6
        full = full[: len(prompt) + 7]
        expected_nv = full[len(prompt) - 1:, : VOCAB - 6]
        np.testing.assert_allclose(logits_nv[:, : VOCAB - 6], expected_nv, atol=LOGITS_ATOL, rtol=0)
        assert np.all(logits_nv[:, VOCAB - 6:] == np.finfo(np.float32).min)
        # log-probs are those of the chosen tokens under the masked distribution
        lse = np.log(np.exp(expected_nv - expected_nv.max(-1, keepdims=True)).sum(-1)) + expected_nv.max(-1)
        np.testing.assert_allclose(logprobs, expected_nv[np.arange(8), tokens] - lse, atol=LOGITS_ATOL)
        worst = max(worst, float(np.abs(logits_nv[:, : VOCAB - 6] - expected_nv).max()))
    print(f"max |cached - full| logit difference: {worst:.2e}")


def _low_level(model, prompts, *, max_new_tokens, eos, pad_id=0, force=None):
    """Runs prefill + decode_loop directly on left-padded arrays; returns the final DecodeState."""
    from flax import nnx

    from bsft_jax.decode.layered import unstack_layers

    graphdef, params = nnx.split(unstack_layers(model))  # the decode phases take the per-layer model
    t = max(map(len, prompts))
    prompt_bt = np.full((len(prompts), t), pad_id, np.int32)
    mask_bt = np.zeros_like(prompt_bt)
    for i, p in enumerate(prompts):
        prompt_bt[i, t - len(p):], mask_bt[i, t - len(p):] = p, 1
    force_b = np.asarray(force if force is not None else [-1] * len(prompts), np.int32)
    eos_e = np.asarray(sorted(eos), np.int32)
    sampling = SamplingParams()
    state = prefill(graphdef, params, prompt_bt, mask_bt, np.ones(len(prompts), bool), force_b, eos_e,
                    jax.random.key(0), max_new_tokens=max_new_tokens, sampling=sampling, pad_id=pad_id)
    return decode_loop(graphdef, params, state, eos_e, sampling=sampling, pad_id=pad_id)


def test_eos_rows_stop_pad_and_leave_other_rows_alone(qwen):
    model, _ = qwen
    free = generate(model, PROMPTS, max_new_tokens=8)  # no EOS: every row runs the full budget
    eos = {free[0][2]}  # row 0 stops at its third token
    state = _low_level(model, PROMPTS, max_new_tokens=8, eos=eos, pad_id=1)
    tokens_bn = np.asarray(state.tokens_bn)
    for i, row in enumerate(free):
        kept = _truncate(row, eos)
        assert tokens_bn[i, : len(kept)].tolist() == kept, i
        assert np.all(tokens_bn[i, len(kept):] == 1), i  # padding after EOS
        assert np.all(np.asarray(state.logprobs_bn)[i, len(kept):] == 0), i
        assert bool(state.done_b[i]) == (len(kept) < 8 or kept[-1] in eos)
    assert generate(model, PROMPTS, max_new_tokens=8, eos_ids=eos) == [_truncate(r, eos) for r in free]
    # When every row is done the loop stops before the budget.
    all_first = {r[0] for r in free}
    state = _low_level(model, PROMPTS, max_new_tokens=8, eos=all_first)
    assert int(state.step) == 1 and bool(np.all(state.done_b))


def test_sampling_seeded_and_top_k1_is_greedy(qwen):
    model, _ = qwen
    sampler = Sampler(model)
    kw = dict(max_new_tokens=8, temperature=1.0)
    a = sampler(PROMPTS, seed=3, **kw).tokens
    assert a == sampler(PROMPTS, seed=3, **kw).tokens
    assert a != sampler(PROMPTS, seed=4, **kw).tokens
    greedy = sampler(PROMPTS, max_new_tokens=8).tokens
    assert a != greedy
    assert sampler(PROMPTS, seed=5, top_k=1, **kw).tokens == greedy
    assert sampler(PROMPTS, seed=5, top_p=1e-6, **kw).tokens == greedy


def test_top_k_top_p_restrict_support():
    probs = np.asarray([0.5, 0.3, 0.15, 0.05], np.float32)
    logits_bv = np.tile(np.log(probs), (4000, 1))
    key = jax.random.key(0)
    top_p = np.asarray(sample_logits(logits_bv, key, SamplingParams(1.0, None, 0.7)))
    assert set(top_p.tolist()) == {0, 1}  # mass before token 2 is 0.8 >= 0.7
    assert abs(np.mean(top_p == 0) - 0.5 / 0.8) < 0.03
    top_k = np.asarray(sample_logits(logits_bv, key, SamplingParams(1.0, 3, None)))
    assert set(top_k.tolist()) == {0, 1, 2}
    assert abs(np.mean(top_k == 2) - 0.15 / 0.95) < 0.03
    plain = np.asarray(sample_logits(logits_bv, key, SamplingParams(1.0)))
    assert set(plain.tolist()) == {0, 1, 2, 3}


def test_force_first_token(qwen):
    model, _ = qwen
    free = generate(model, PROMPTS, max_new_tokens=8)
    forced = generate(model, PROMPTS, max_new_tokens=8, force_first_token=[10, None, 20, 10])
    assert [r[0] for r in forced] == [10, free[1][0], 20, 10]
    assert forced[1] == free[1]
    # after the forced token the model continues exactly as if the token were part of the prompt
    cont = generate(model, [PROMPTS[0] + [10], PROMPTS[2] + [20]], max_new_tokens=8)
    assert forced[0][1:] == cont[0][:7] and forced[2][1:] == cont[1][:7]
    assert all(r[0] == 30 for r in generate(model, PROMPTS, max_new_tokens=8, force_first_token=30))


def test_chunks_and_length_sorting_keep_input_order(qwen):
    model, _ = qwen
    force = [10, None, 20, None]
    whole = Sampler(model, sort_by_length=False)(PROMPTS, max_new_tokens=8, force_first_token=force)
    chunked = Sampler(model, max_batch_size=2)(PROMPTS, max_new_tokens=8, force_first_token=force)
    assert chunked.tokens == whole.tokens and chunked.num_prompt_tokens == sum(map(len, PROMPTS))
    np.testing.assert_allclose(np.concatenate(chunked.logprobs), np.concatenate(whole.logprobs), atol=LOGITS_ATOL)


def test_bucketing_keeps_compile_count(qwen):
    assert bucket_size(5) == 8 and bucket_size(5, minimum=16) == 16 and bucket_size(17, minimum=16) == 32
    assert [bucket_size(n, minimum=16, half_steps=True) for n in (3, 17, 25, 33, 537, 769)] == [16, 24, 32, 48, 768,
                                                                                               1024]
    assert bucket_size(5, (8, 24)) == 8 and bucket_size(30, (8, 24)) == 48 and bucket_size(3, multiple=4) == 4
    model, _ = qwen
    sampler = Sampler(model)
    kw = dict(max_new_tokens=7)  # a budget no other test uses: fresh compilations
    sampler([[1, 2, 3, 4, 5], [6] * 9, [7] * 2], **kw)  # length bucket 16, batch bucket 4
    before = sampler.compile_counts()
    sampler([[8] * 12, [9] * 3, [1], [2] * 16], **kw)  # other lengths, same buckets
    assert sampler.compile_counts() == before
    sampler([[8] * 20, [9] * 3], **kw)  # length bucket 24, batch bucket 2: one new compilation each
    after = sampler.compile_counts()
    assert after == {k: v + 1 for k, v in before.items()}


def test_sharded_equals_unsharded(qwen):
    model, _ = qwen
    mesh = make_mesh({"data": 4, "tensor": 2})
    single = Sampler(model)
    sharded = Sampler(model, mesh=mesh)
    assert "tensor" in str(sharded.params["blocks"][0]["attn"]["q_proj"].get_value().sharding.spec)
    for kw in (dict(), dict(temperature=1.0, top_k=50, seed=7)):
        a = single(PROMPTS, max_new_tokens=8, keep_logits=True, **kw)
        b = sharded(PROMPTS, max_new_tokens=8, keep_logits=True, **kw)
        assert a.tokens == b.tokens
        for la, lb in zip(a.logits, b.logits):
            np.testing.assert_allclose(la, lb, atol=LOGITS_ATOL, rtol=0)
    # the cache really is laid out over the mesh: batch over data, KV heads over tensor
    graphdef = sharded.graphdef
    prompt = jax.device_put(np.ones((4, 16), np.int32), jax.sharding.NamedSharding(mesh, jax.P("data")))
    with jax.set_mesh(mesh):
        state = prefill(graphdef, sharded.params, prompt, prompt, np.ones(4, bool), -np.ones(4, np.int32),
                        np.zeros(0, np.int32), jax.random.key(0), max_new_tokens=4, sampling=SamplingParams(),
                        pad_id=0)
    # per-layer [B, K, S, H] buffers
    assert len(state.cache.k) == model.config.num_layers
    assert tuple(state.cache.k[0].sharding.spec)[:2] == ("data", "tensor")
