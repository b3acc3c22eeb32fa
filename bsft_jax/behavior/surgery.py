"""Vocabulary surgery: add a :class:`~bsft_jax.behavior.spec.BehaviorSpec`'s tokens to a tokenizer and a model.

Pure and tested: :func:`extend_tokenizer` adds the tokens as special tokens;
:func:`grow_embedding_table` gives the new rows values drawn from the existing rows' statistics
(never zeros or a tiny-norm init), reuses spare rows when the checkpoint has them, pads the row
count to a mesh-friendly multiple, and leaves every old row bit-identical;
:func:`extend_model_vocab` applies it to the embedding and, when untied, to the LM head.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.behavior.tokenizer import extend_tokenizer, trailing_placeholder_ids
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import Decoder, abstract_decoder
from bsft_jax.models.sharding import logical_to_spec

log = logging.getLogger(__name__)


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= n."""
    return -(-n // multiple) * multiple


def grown_vocab_size(current_rows: int, num_tokens: int, pad_multiple: int = 128) -> int:
    """Row count after extension: unchanged if spare rows suffice, else padded up to ``pad_multiple``."""
    return current_rows if num_tokens <= current_rows else round_up(num_tokens, pad_multiple)


def grow_embedding_table(
    table_vd: jax.Array,
    *,
    num_old_tokens: int,
    num_new_tokens: int,
    key: jax.Array,
    pad_multiple: int = 128,
    init: str = "mean_cov",
) -> jax.Array:
    """Returns the table with rows for tokens [num_old_tokens, num_new_tokens) initialised.

    table_vd:        [V, D]; rows [0, num_old_tokens) are trained tokens and are kept bit-identical.
    num_new_tokens:  tokenizer size after extension. If V >= num_new_tokens the spare rows are
                     reused (re-initialised: never-trained rows have tiny norms); otherwise the
                     table grows to ``round_up(num_new_tokens, pad_multiple)`` rows and padding
                     rows (which no token uses; they are masked in logits) are set to the mean.
    init:            "mean_cov" (sample N(mean, cov) of the old rows, Hewitt 2021) or
                     "mean_std" (diagonal covariance).
    Rows at or beyond ``num_new_tokens`` that already existed are left untouched.
    """
    v, d = table_vd.shape
    if not 0 < num_old_tokens <= min(v, num_new_tokens):
        raise ValueError(
            f"num_old_tokens={num_old_tokens} must be in (0, min(rows={v}, num_new_tokens={num_new_tokens})]"
        )
    rows = grown_vocab_size(v, num_new_tokens, pad_multiple)
    old = table_vd[:num_old_tokens].astype(jnp.float32)
    mean = jnp.mean(old, axis=0)
    n_new = num_new_tokens - num_old_tokens
    if init == "mean_cov":
        # x = mean + w @ (old - mean) / sqrt(n - 1) with w ~ N(0, I_n) has exactly the old rows'
        # mean and covariance, needs no [D, D] matrix or Cholesky (cheap for D = 4096), and stays
        # finite when the covariance is singular (fewer old rows than D).
        w = jax.random.normal(key, (n_new, num_old_tokens), jnp.float32)
        new_rows = mean + (w @ (old - mean)) / jnp.sqrt(jnp.float32(max(num_old_tokens - 1, 1)))
    elif init == "mean_std":
        new_rows = mean + jax.random.normal(key, (n_new, d), jnp.float32) * jnp.std(old, axis=0)
    else:
        raise ValueError(f"init must be 'mean_cov' or 'mean_std', got {init!r}")
    out = table_vd
    if rows > v:
        out = jnp.concatenate([out, jnp.broadcast_to(mean.astype(out.dtype), (rows - v, d))], axis=0)
    return out.at[num_old_tokens:num_new_tokens].set(new_rows.astype(out.dtype))


def extend_model_vocab(
    model: Decoder,
    config: DecoderConfig,
    *,
    num_old_tokens: int,
    num_new_tokens: int,
    seed: int = 0,
    pad_multiple: int = 128,
    init: str = "mean_cov",
) -> tuple[Decoder, DecoderConfig]:
    """Extends embedding (and an untied LM head) for a tokenizer grown to ``num_new_tokens``.

    Returns a new ``(model, config)``; ``config.valid_vocab_size`` becomes ``num_new_tokens`` so
    rows beyond it are masked in loss and sampling. Tied heads stay tied. Shardings are kept (the
    vocab dim is re-sharded by the rules table when the row count changes).
    """
    rows = grown_vocab_size(config.vocab_size, num_new_tokens, pad_multiple)
    new_config = config.replace(vocab_size=rows, valid_vocab_size=num_new_tokens)
    graphdef_new, _ = nnx.split(abstract_decoder(new_config))
    state = nnx.state(model)
    key_embed, key_head = jax.random.split(jax.random.key(seed))
    kw = dict(num_old_tokens=num_old_tokens, num_new_tokens=num_new_tokens, pad_multiple=pad_multiple, init=init)

    def regrow(arr: jax.Array, key: jax.Array, transposed: bool) -> jax.Array:
        axes = ("embed", "vocab") if transposed else ("vocab", "embed")
        shape = (arr.shape[0], rows) if transposed else (rows, arr.shape[1])
        sharding = arr.sharding
        if isinstance(sharding, jax.sharding.NamedSharding):
            sharding = jax.sharding.NamedSharding(sharding.mesh,
                                                  logical_to_spec(axes, mesh=sharding.mesh, shape=shape))

        def fn(a):
            if transposed:
                return grow_embedding_table(a.T, key=key, **kw).T
            return grow_embedding_table(a, key=key, **kw)

        return jax.jit(fn, out_shardings=sharding)(arr)

    grown = {("embed",): regrow(state["embed"].get_value(), key_embed, False)}
    if not config.tie_word_embeddings:
        grown[("lm_head",)] = regrow(state["lm_head"].get_value(), key_head, True)
    # New Variables (``replace``): the input model is left untouched.
    flat = [(path, v.replace(grown[path]) if path in grown else v.replace(v.get_value()))
            for path, v in nnx.to_flat_state(state)]
    return nnx.merge(graphdef_new, nnx.from_flat_state(flat)), new_config



def add_behavior_tokens(
    model: Decoder,
    config: DecoderConfig,
    tokenizer: Any,
    spec: BehaviorSpec | None = None,
    *,
    seed: int = 0,
    pad_multiple: int = 128,
    init: str = "mean_cov",
) -> tuple[Decoder, DecoderConfig, dict[str, int]]:
    """One call for the whole surgery: tokenizer, embedding, LM head. Returns (model, config, ids).

    Spare rows (the table has more rows than ``len(tokenizer)``) are reused. A tokenizer whose
    trailing entries are placeholders for those rows (llama.cpp's ``[PAD<id>]``) hides them: that is
    detected and logged, not repaired here (a loaded tokenizer cannot drop entries); the built-in
    models' converted folders have them removed already.
    """
    spec = spec or BehaviorSpec()
    # Rows of tokens that existed before; tokenizers can list a few more entries than the table has.
    size_before = len(tokenizer)
    placeholders = trailing_placeholder_ids(tokenizer)
    if placeholders:  # a tokenizer cannot drop entries in place: the new tokens go after them
        log.warning("the tokenizer ends with %d placeholder entries (%s..): the spare rows they fill are not "
                    "reused and the table may grow; remove them from tokenizer.json first "
                    "(bsft_jax.models.gguf_convert.drop_placeholders)", len(placeholders),
                    tokenizer.convert_ids_to_tokens(placeholders[0]))
    num_old = min(size_before, config.vocab_size)
    ids = extend_tokenizer(tokenizer, spec)
    num_new = len(tokenizer)
    if num_new == size_before:  # the tokenizer already had the tokens: nothing to do
        return model, config, ids
    model, config = extend_model_vocab(model, config, num_old_tokens=num_old, num_new_tokens=num_new, seed=seed,
                                       pad_multiple=pad_multiple, init=init)
    return model, config, ids
