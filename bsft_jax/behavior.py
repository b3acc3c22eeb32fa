"""Behavior tokens: the vocabulary BehaviorSFT is named after.

The token set is configuration (:class:`BehaviorSpec`): by default one token per behavior group
(``reactive``, ``balanced``, ``proactive``) with readable special-token strings, and a mapping
from task category to token. BehaviorSFT trains the assistant turn to start with the behavior
token, so the model first chooses how to act, then acts conditioned on that choice.

Vocabulary surgery is pure and tested: :func:`extend_tokenizer` adds the tokens as special
tokens; :func:`grow_embedding_table` gives the new rows values drawn from the existing rows'
statistics (never zeros or a tiny-norm init), reuses spare rows when the checkpoint has them, pads
the row count to a mesh-friendly multiple, and leaves every old row bit-identical;
:func:`extend_model_vocab` applies it to the embedding and, when untied, to the LM head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bsft_jax import taxonomy
from bsft_jax.models.config import DecoderConfig
from bsft_jax.models.decoder import Decoder, abstract_decoder
from bsft_jax.sharding import logical_to_spec

DEFAULT_BEHAVIORS: tuple[str, ...] = taxonomy.GROUPS
DEFAULT_TOKEN_FORMAT = "<|behavior:{name}|>"
# The item-level scheme: the token names the decision the reply makes on THIS scene, along the
# paper's reactive <-> proactive spectrum. "answer": a question was asked and answering it is all
# that is needed (reactive); "intervene": speak up, unasked, about something wrong or missing
# (helpful proactivity); "hold": the scene invites a comment but none is warranted (necessary
# restraint). The group scheme instead gives every item of a category the same token.
SCHEMES: tuple[str, ...] = ("group", "item")
ITEM_BEHAVIORS: tuple[str, ...] = ("answer", "intervene", "hold")
NO_INTERVENTION_LABEL = "none"  # the restraint label (bsft_jax.data.schema.NO_INTERVENTION)


@dataclasses.dataclass(frozen=True)
class BehaviorSpec:
    """Which behavior tokens exist and which one each task category uses.

    names:         behavior names, e.g. ("reactive", "balanced", "proactive").
    token_format:  how a name becomes its special-token string.
    category_map:  category -> behavior name; categories not listed use their taxonomy group.
    scheme:        "group" (one token per category, via category_map / group) or "item" (the token
                   follows the item's decision: :data:`ITEM_BEHAVIORS`; names must include them).
    """

    names: tuple[str, ...] = DEFAULT_BEHAVIORS
    token_format: str = DEFAULT_TOKEN_FORMAT
    category_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    scheme: str = "group"

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "category_map", dict(self.category_map))
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"behavior names must be non-empty and unique, got {self.names}")
        if "{name}" not in self.token_format:
            raise ValueError(f"behavior token_format must contain '{{name}}', got {self.token_format!r}")
        for category, name in self.category_map.items():
            if name not in self.names:
                raise ValueError(f"behavior category_map[{category!r}] = {name!r} is not one of {self.names}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"behavior scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.scheme == "item" and not set(ITEM_BEHAVIORS) <= set(self.names):
            raise ValueError(f"behavior scheme 'item' needs names {ITEM_BEHAVIORS}, got {self.names}")

    @classmethod
    def item_scheme(cls, token_format: str = DEFAULT_TOKEN_FORMAT) -> BehaviorSpec:
        """The item-level spec: names ("answer", "intervene", "hold"), scheme "item"."""
        return cls(names=ITEM_BEHAVIORS, token_format=token_format, scheme="item")

    @property
    def tokens(self) -> tuple[str, ...]:
        """Special-token strings, in ``names`` order."""
        return tuple(self.token_format.format(name=n) for n in self.names)

    def token(self, name: str) -> str:
        """The token string of a behavior name."""
        if name not in self.names:
            raise KeyError(f"unknown behavior {name!r}; expected one of {self.names}")
        return self.token_format.format(name=name)

    def behavior_for_category(self, category: str) -> str:
        """Behavior name a category uses by default (explicit map first, then its group)."""
        if category in self.category_map:
            return self.category_map[category]
        group = taxonomy.group_of(category)
        if group not in self.names:
            raise KeyError(f"category {category!r} (group {group!r}) has no behavior; add it to category_map")
        return group

    def behavior_for_item(self, category: str, label: str, multiple_choice: bool) -> str:
        """Behavior name of one item: its category's under the group scheme, its decision under "item"."""
        if self.scheme == "group":
            return self.behavior_for_category(category)
        if multiple_choice:
            return "answer"
        return "hold" if label == NO_INTERVENTION_LABEL else "intervene"

    def name_of_token(self, token: str) -> str | None:
        """Inverse of :meth:`token` (None for any other string)."""
        for n, t in zip(self.names, self.tokens):
            if t == token:
                return n
        return None

    @classmethod
    def from_config(cls, cfg: Any) -> BehaviorSpec:
        """From an ml_collections/dict block with optional ``names``, ``token_format``, ``category_map``, ``scheme``."""
        get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        return cls(
            names=tuple(get("names", DEFAULT_BEHAVIORS)),
            token_format=get("token_format", DEFAULT_TOKEN_FORMAT),
            category_map=dict(get("category_map", {}) or {}),
            scheme=get("scheme", "group") or "group",
        )


# ----------------------------------------------------------------------------- tokenizer
def extend_tokenizer(tokenizer: Any, spec: BehaviorSpec) -> dict[str, int]:
    """Adds the behavior tokens to an HF tokenizer as special tokens; returns name -> id.

    Idempotent. Each token is checked to encode to exactly one id in context.
    """
    missing = [t for t in spec.tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return behavior_token_ids(tokenizer, spec)


def behavior_token_ids(tokenizer: Any, spec: BehaviorSpec) -> dict[str, int]:
    """name -> id of each behavior token; raises if one is absent or is not a single id."""
    ids = {}
    for name, token in zip(spec.names, spec.tokens):
        encoded = tokenizer.encode("a" + token + "b", add_special_tokens=False)
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or encoded.count(tid) != 1 or len(tokenizer.encode(token, add_special_tokens=False)) != 1:
            raise ValueError(f"behavior token {token!r} is not a single special token of this tokenizer; "
                             "call extend_tokenizer first")
        ids[name] = int(tid)
    return ids


# ----------------------------------------------------------------------------- embeddings
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


def mask_padded_logits(logits: jax.Array, num_valid: int | None) -> jax.Array:
    """Sets logits of rows that belong to no token (index >= num_valid) to the dtype's minimum."""
    if num_valid is None or num_valid >= logits.shape[-1]:
        return logits
    valid = jnp.arange(logits.shape[-1]) < num_valid
    return jnp.where(valid, logits, jnp.finfo(logits.dtype).min)


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
    """One call for the whole surgery: tokenizer, embedding, LM head. Returns (model, config, ids)."""
    spec = spec or BehaviorSpec()
    # Rows of tokens that existed before; tokenizers can list a few more entries than the table has.
    size_before = len(tokenizer)
    num_old = min(size_before, config.vocab_size)
    ids = extend_tokenizer(tokenizer, spec)
    num_new = len(tokenizer)
    if num_new == size_before:  # the tokenizer already had the tokens: nothing to do
        return model, config, ids
    model, config = extend_model_vocab(model, config, num_old_tokens=num_old, num_new_tokens=num_new, seed=seed,
                                       pad_multiple=pad_multiple, init=init)
    return model, config, ids


def spec_tokens_in_order(spec: BehaviorSpec, ids: Mapping[str, int]) -> Sequence[int]:
    """Behavior token ids in ``spec.names`` order (for constrained first-token decoding)."""
    return [ids[n] for n in spec.names]
