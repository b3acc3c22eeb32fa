"""Behavior tokens: tokenizer extension on real vocabularies, embedding surgery, logit masking."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bsft_jax import BehaviorSpec, add_behavior_tokens, extend_tokenizer, init_decoder, load_hf, save_hf
from bsft_jax.behavior.surgery import extend_model_vocab, grow_embedding_table, grown_vocab_size
from bsft_jax.behavior.tokenizer import behavior_token_ids
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.logits import mask_padded_logits
from tests import assets
from tests.helpers import padded_batch, save_tiny, torch_logits

SPEC = BehaviorSpec()


@pytest.fixture(scope="module")
def qwen_tokenizer_dir():
    return assets.qwen2_tokenizer_dir()


@pytest.fixture(scope="module")
def llama_tokenizer_dir():
    return assets.llama3_tokenizer_dir()


def _load(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_spec_defaults_and_category_mapping():
    assert SPEC.tokens == ("<|behavior:reactive|>", "<|behavior:balanced|>", "<|behavior:proactive|>")
    assert SPEC.behavior_for_category("Error Correction") == "proactive"
    assert SPEC.behavior_for_category("Temporal Ordering") == "reactive"
    custom = BehaviorSpec(names=("act", "wait"), category_map={"Error Correction": "act"}, token_format="<{name}>")
    assert custom.token("wait") == "<wait>" and custom.behavior_for_category("Error Correction") == "act"
    with pytest.raises(KeyError, match="category_map"):
        custom.behavior_for_category("Temporal Ordering")
    with pytest.raises(ValueError, match="not one of"):
        BehaviorSpec(names=("a",), category_map={"Error Correction": "b"})


@pytest.mark.parametrize("which", ["qwen", "llama"])
def test_real_tokenizers_get_single_id_tokens_that_survive_save_load(which, tmp_path, request):
    folder = request.getfixturevalue(f"{which}_tokenizer_dir")
    tok = _load(folder)
    if which == "qwen":
        assert tok.encode("Hello, world!", add_special_tokens=False) == [9707, 11, 1879, 0]
        assert tok.convert_tokens_to_ids("<|im_end|>") == 151645
    before = len(tok)
    ids = extend_tokenizer(tok, SPEC)
    assert len(tok) == before + 3 and sorted(ids.values()) == list(range(before, before + 3))
    assert extend_tokenizer(tok, SPEC) == ids  # idempotent
    text = "Note:" + SPEC.token("proactive") + "Potassium is 6.8"
    encoded = tok.encode(text, add_special_tokens=False)
    assert encoded.count(ids["proactive"]) == 1
    assert tok.decode(encoded) == text
    messages = [{"role": "user", "content": "K+ 6.8?"},
                {"role": "assistant", "content": SPEC.token("proactive") + "Flag: critical potassium"}]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert SPEC.token("proactive") + "Flag" in rendered
    rendered_ids = tok.apply_chat_template(messages, tokenize=True)
    rendered_ids = rendered_ids["input_ids"] if hasattr(rendered_ids, "keys") else rendered_ids
    assert ids["proactive"] in list(rendered_ids)
    tok.save_pretrained(tmp_path / "tok")
    again = _load(tmp_path / "tok")
    assert behavior_token_ids(again, SPEC) == ids
    assert again.apply_chat_template(messages, tokenize=False) == rendered


def test_grow_keeps_old_rows_and_draws_new_rows_from_their_statistics():
    rng = np.random.RandomState(0)
    d, v_old = 16, 3000
    mixing = rng.randn(d, d) * 0.3
    old = (rng.randn(v_old, d) @ mixing + 2.0).astype(np.float32)  # mean 2, correlated columns
    table = jnp.asarray(old)
    n_new = 4000
    grown = np.asarray(grow_embedding_table(table, num_old_tokens=v_old, num_new_tokens=v_old + n_new,
                                            key=jax.random.key(0), pad_multiple=128))
    assert grown.shape == (grown_vocab_size(v_old, v_old + n_new, 128), d) and grown.shape[0] % 128 == 0
    np.testing.assert_array_equal(grown[:v_old], old)  # bit-identical
    new = grown[v_old : v_old + n_new]
    np.testing.assert_allclose(new.mean(0), old.mean(0), atol=0.1)
    cov_old, cov_new = np.cov(old.T), np.cov(new.T)
    # sample covariance of 4000 rows: ~2% relative error expected; a diagonal-only init would be off
    # by the whole off-diagonal part, which is large here
    off_diagonal = np.linalg.norm(cov_old - np.diag(np.diag(cov_old))) / np.linalg.norm(cov_old)
    assert off_diagonal > 0.3
    assert np.linalg.norm(cov_new - cov_old) / np.linalg.norm(cov_old) < 0.08
    # norms look like trained rows, not a tiny default init
    assert 0.8 < np.linalg.norm(new, axis=1).mean() / np.linalg.norm(old, axis=1).mean() < 1.2
    # padding rows (no token) are the mean
    np.testing.assert_allclose(grown[v_old + n_new :], np.broadcast_to(old.mean(0), grown[v_old + n_new :].shape),
                               atol=1e-5)
    diag = np.asarray(grow_embedding_table(table, num_old_tokens=v_old, num_new_tokens=v_old + n_new,
                                           key=jax.random.key(0), init="mean_std"))
    np.testing.assert_allclose(diag[v_old : v_old + n_new].std(0), old.std(0), rtol=0.1)


def test_few_old_rows_and_a_wide_table_stay_finite():
    """63 trained rows, 1024 dims: the covariance is singular; new rows must still be finite and sized."""
    old = np.random.RandomState(2).randn(63, 1024).astype(np.float32)
    grown = np.asarray(grow_embedding_table(jnp.asarray(old), num_old_tokens=63, num_new_tokens=66,
                                            key=jax.random.key(2)))
    assert np.isfinite(grown).all()
    np.testing.assert_array_equal(grown[:63], old)
    ratio = np.linalg.norm(grown[63:66], axis=1).mean() / np.linalg.norm(old, axis=1).mean()
    assert 0.8 < ratio < 1.2


def test_spare_rows_are_reused_without_growing():
    """Qwen2.5-style: 152,064 rows for ~151.6k tokens. Here 200 rows, 150 tokens, 3 new ones."""
    rng = np.random.RandomState(1)
    table = rng.randn(200, 8).astype(np.float32)
    table[150:] *= 1e-3  # never-trained spare rows have tiny norms
    grown = np.asarray(grow_embedding_table(jnp.asarray(table), num_old_tokens=150, num_new_tokens=153,
                                            key=jax.random.key(1)))
    assert grown.shape == table.shape
    np.testing.assert_array_equal(grown[:150], table[:150])
    np.testing.assert_array_equal(grown[153:], table[153:])  # untouched spare rows
    assert np.linalg.norm(grown[150:153], axis=1).min() > 0.3 * np.linalg.norm(table[:150], axis=1).mean()


@pytest.mark.parametrize("tie", [True, False])
def test_extend_model_vocab_tied_and_untied(tie):
    config = DecoderConfig(model_type="qwen2", vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=1,
                           num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True, tie_word_embeddings=tie)
    model = init_decoder(config, seed=0)
    old_embed = np.asarray(model.embed.value)
    new_model, new_config = extend_model_vocab(model, config, num_old_tokens=300, num_new_tokens=303)
    assert model.embed.value.shape == (300, 32)  # the input model is not mutated
    assert new_config.vocab_size == 384 and new_config.valid_vocab_size == 303
    np.testing.assert_array_equal(np.asarray(new_model.embed.value)[:300], old_embed)
    assert hasattr(new_model, "lm_head") == (not tie)
    if not tie:
        assert new_model.lm_head.value.shape == (32, 384)
        np.testing.assert_array_equal(np.asarray(new_model.lm_head.value)[:, :300], np.asarray(model.lm_head.value))
    ids = jnp.asarray([[1, 301, 302, 5]])
    logits = new_model(ids)
    assert logits.shape == (1, 4, 384)
    masked = np.asarray(mask_padded_logits(logits, new_config.valid_vocab_size))
    assert (masked[..., 303:] == np.finfo(np.float32).min).all()
    np.testing.assert_array_equal(masked[..., :303], np.asarray(logits)[..., :303])
    assert int(jnp.argmax(jnp.asarray(masked), -1).max()) < 303


def test_extension_is_sharded_like_the_rest():
    from bsft_jax.models.sharding import make_mesh, state_shardings

    config = DecoderConfig(model_type="llama", vocab_size=250, hidden_size=32, intermediate_size=64, num_layers=1,
                           num_heads=4, num_kv_heads=2, head_dim=8)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        from flax import nnx

        model = init_decoder(config)
        state = nnx.state(model)
        nnx.update(model, jax.device_put(state, state_shardings(state, mesh)))
        new_model, new_config = extend_model_vocab(model, config, num_old_tokens=250, num_new_tokens=253)
    spec = new_model.embed.value.sharding.spec
    assert new_config.vocab_size == 256 and spec == jax.sharding.PartitionSpec("tensor", "fsdp")


@pytest.mark.parametrize("tie", [True, False])
def test_extended_model_round_trips_through_transformers(tmp_path, qwen_tokenizer_dir, tie):
    """Grow a tiny Qwen2 for the real Qwen2 tokenizer + behavior tokens; transformers loads and agrees."""
    from transformers import Qwen2ForCausalLM

    tok = _load(qwen_tokenizer_dir)
    vocab = len(tok)  # 151,646 rows, one per token, like a checkpoint with no spare rows
    folder, ref = save_tiny(tmp_path, "qwen2", tie=tie, vocab=vocab)
    model, config = load_hf(folder)
    model, config, ids = add_behavior_tokens(model, config, tok, SPEC, pad_multiple=128)
    assert config.vocab_size == 151_680 and config.valid_vocab_size == 151_649
    out = save_hf(model, config, tmp_path / "grown", tokenizer=tok)
    assert os.path.isfile(os.path.join(out, "chat_template.jinja"))
    hf = Qwen2ForCausalLM.from_pretrained(out).eval()
    assert hf.get_input_embeddings().weight.shape == (151_680, 64)
    batch, mask, pos = padded_batch(vocab=vocab)
    batch[0, 3] = ids["proactive"]
    expected = torch_logits(hf, batch, mask, pos)
    got = np.asarray(model(jnp.asarray(batch), attention_mask=jnp.asarray(mask)))
    real = mask.astype(bool)
    assert np.abs(got - expected)[real].max() <= 1e-4
    reloaded_tok = _load(out)
    assert behavior_token_ids(reloaded_tok, SPEC) == ids


def _word_tokenizer(tokens: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=tokens[0])


def test_trailing_placeholders_are_detected_and_reported_by_the_surgery(caplog):
    from bsft_jax.behavior.tokenizer import trailing_placeholder_ids

    real = ["<unk>", "a", "[PAD2]", "b"]  # a placeholder inside the vocabulary is a real id: not counted
    assert trailing_placeholder_ids(_word_tokenizer(real)) == []
    tok = _word_tokenizer([*real, "[PAD4]", "[PAD5]", "[PAD6]", "[PAD7]"])
    assert trailing_placeholder_ids(tok) == [4, 5, 6, 7]
    config = DecoderConfig(model_type="llama", vocab_size=8, hidden_size=16, intermediate_size=32, num_layers=1,
                           num_heads=2, num_kv_heads=1, head_dim=8)
    with caplog.at_level("WARNING", logger="bsft_jax.behavior.surgery"):
        _, new_config, ids = add_behavior_tokens(init_decoder(config, seed=0), config, tok, SPEC, pad_multiple=8)
    assert "ends with 4 placeholder entries ([PAD4]..)" in caplog.text
    assert sorted(ids.values()) == [8, 9, 10] and new_config.vocab_size == 16  # the documented limit: it grows
