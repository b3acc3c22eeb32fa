"""The real Gemma-3-270M (dequantized from the registry's Q4_K_M GGUF) against transformers.

One conversion per checkout (tests/.assets, ~4 min on 2 busy cores the first time); then, kept
CPU-cheap (short prompts except the checks past the 512-token window, tiny batches):
parity with the window active, greedy generation (short prompts, and a ragged batch whose decoding
crosses the window, logits included), an export round trip, the behavior tokens on the 262k
vocabulary, and a few BehaviorSFT steps.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bsft_jax import generate, load_hf, save_hf
from bsft_jax.behavior import BehaviorSpec, add_behavior_tokens
from tests.realweights.gemma3_270m_asset import gemma3_270m_dir

TEXT = (
    "The patient is a 67-year-old man with a history of hypertension and type 2 diabetes who presents with "
    "two days of worsening shortness of breath, orthopnea and bilateral leg swelling. On examination his "
    "blood pressure is 152/94, heart rate 104, oxygen saturation 91% on room air. "
)


@pytest.fixture(scope="module")
def gemma():
    """(folder, our model, its config, the transformers model, tokenizer), all fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gemma3_270m_dir()
    torch.set_num_threads(2)
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model, config = load_hf(folder)
    return folder, model, config, ref, AutoTokenizer.from_pretrained(folder)


def test_config_is_the_published_architecture(gemma):
    _, _, c, _, _ = gemma
    assert (c.model_type, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (
        "gemma3_text", 18, 640, 4, 1, 256)
    assert c.vocab_size == 262_144 and c.tie_word_embeddings and c.sliding_window == 512
    assert c.layer_types == (("sliding_attention",) * 5 + ("full_attention",)) * 3
    assert (c.rope_theta, c.rope_local_theta, c.query_pre_attn_scalar) == (1e6, 1e4, 256)


def test_logits_match_transformers_past_the_sliding_window(gemma):
    """fp32 logits over 600 tokens (window 512): every position, both the local and the global layers."""
    _, model, _, ref, tok = gemma
    ids = tok(TEXT * 12).input_ids[:600]
    assert len(ids) == 600
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits.float().numpy()[0]
    got = np.asarray(model(jnp.asarray([ids])))[0]
    err = np.abs(got - expected)
    print(f"gemma3-270m fp32 600 tokens: max |dlogit| {err.max():.2e} (first 512: {err[:512].max():.2e}, "
          f"after: {err[512:].max():.2e}); logit scale {np.abs(expected).max():.1f}")
    assert err.max() <= 2e-3
    assert (got.argmax(-1) == expected.argmax(-1)).mean() == 1.0


def test_greedy_generation_equals_transformers(gemma):
    _, model, config, ref, tok = gemma
    prompts = ["The capital of France is", "Symptoms of heart failure include"]
    ours = generate(model, [tok(p).input_ids for p in prompts], max_new_tokens=12)
    for prompt, new in zip(prompts, ours, strict=True):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = ref.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
        assert new == out[0, ids.shape[1]:].tolist(), (prompt, tok.decode(new), tok.decode(out[0, ids.shape[1]:]))


def test_greedy_decode_across_the_window_equals_transformers(gemma):
    """A batch of two ragged prompts (505 and 498 tokens, left-padded together) and 20 greedy tokens:
    decoding crosses the 512-token window (the cache then holds more than a window of keys). Tokens
    equal to transformers' generate(do_sample=False) on each prompt alone, and the logits of every
    step equal its cached decoding's (fp32). The logits are the sharper check: with the window removed
    (``load_hf(..., sliding_window=100_000)``) the 20 tokens still agree on this text, but the logits
    of the steps past the window differ by ~1."""
    from bsft_jax.decode.sampler import Sampler

    _, model, _, ref, tok = gemma
    base = tok(TEXT * 12).input_ids
    prompts, new_tokens = [base[:505], base[:498]], 20
    ours = Sampler(model)(prompts, max_new_tokens=new_tokens, keep_logits=True)
    for prompt, tokens, logits in zip(prompts, ours.tokens, ours.logits, strict=True):
        assert len(prompt) < 512 < len(prompt) + new_tokens
        with torch.no_grad():
            out = ref.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                               return_dict_in_generate=True, output_logits=True)
        theirs = out.sequences[0, len(prompt):].tolist()
        expected = torch.cat(out.logits).float().numpy()  # [20, V]: the prefill's last row, then one per step
        err = np.abs(np.asarray(logits) - expected)
        past = 513 - len(prompt)  # from this step on the query (position len - 1 + step) no longer sees token 0
        print(f"gemma3-270m cached decode, {len(prompt)}-token prompt: max |dlogit| {err.max():.2e} "
              f"(steps past the window: {err[past:].max():.2e})")
        assert tokens == theirs, (len(prompt), tok.decode(tokens), tok.decode(theirs))
        assert err.max() <= 2e-3


def test_export_round_trip(gemma, tmp_path):
    """save_hf writes a folder transformers loads as Gemma3ForCausalLM with the same logits; we read it back."""
    folder, model, config, ref, tok = gemma
    out = save_hf(model, config, tmp_path / "export", tokenizer=tok, dtype="float32")
    hf = json.load(open(os.path.join(out, "config.json")))
    assert hf["architectures"] == ["Gemma3ForCausalLM"] and hf["sliding_window"] == 512
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([tok(TEXT).input_ids])
    with torch.no_grad():
        np.testing.assert_array_equal(back(ids).logits.numpy(), ref(ids).logits.numpy())
    model2, config2 = load_hf(out)
    assert config2 == config
    np.testing.assert_array_equal(np.asarray(model2.embed.value[:1000]), np.asarray(model.embed.value[:1000]))


def test_behavior_tokens_on_the_262k_vocabulary(gemma):
    """Single-id tokens past the 262,144 rows; old rows bit-identical; tied head grows with the table."""
    folder, model, config, _, _ = gemma
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)  # a fresh copy: the surgery extends it
    old = np.asarray(model.embed.value)
    spec = BehaviorSpec()
    grown, new_config, ids = add_behavior_tokens(model, config, tok, spec)
    assert sorted(ids.values()) == list(range(262_144, 262_144 + len(spec.names)))
    assert new_config.vocab_size % 128 == 0 and new_config.vocab_size >= 262_144 + len(spec.names)
    assert new_config.valid_vocab_size == 262_144 + len(spec.names) and new_config.tie_word_embeddings
    table = np.asarray(grown.embed.value)
    np.testing.assert_array_equal(table[:262_144], old)
    assert np.all(np.isfinite(table[262_144:])) and np.linalg.norm(table[262_144:len(tok)], axis=1).min() > 0
    for name, i in ids.items():
        assert tok.encode("Note:" + spec.token(name) + "K 6.8", add_special_tokens=False).count(i) == 1
    logits = np.asarray(grown(jnp.asarray([tok("Hi").input_ids])))
    assert logits.shape[-1] == new_config.vocab_size


def test_a_few_behaviorsft_steps(gemma, tmp_path):
    """python -m bsft_jax.train's run() on the demo data from the real checkpoint: finite, falling loss."""
    from bsft_jax.setup.config import default_config
    from bsft_jax.train import run

    folder = gemma[0]
    c = default_config()
    c.run_dir = str(tmp_path / "run")
    c.model.hf_path = folder
    c.model.dtype = c.model.param_dtype = "float32"
    c.behavior.enabled = True
    c.data.source, c.data.style, c.data.seq_len, c.data.packing = "demo", "behavior_sft", 128, True
    c.data.eval_batches = 0
    c.train.steps, c.train.global_batch_size, c.train.log_every, c.train.eval_every = 3, 2, 1, -1
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 1e-4, 1
    c.mesh.update(data=1, fsdp=1, tensor=1)
    c.checkpoint.every_steps = 3
    c.logging.tensorboard = False
    seen = []
    result = run(c, devices=jax.devices()[:1], on_step=lambda step, m: seen.append(float(m["loss"])))
    print("gemma3-270m BehaviorSFT losses:", " -> ".join(f"{x:.2f}" for x in seen))  # pytest -s shows them
    assert result.final_step == 3 and len(seen) == 3 and np.all(np.isfinite(seen)), seen
    assert seen[-1] < seen[0], seen
