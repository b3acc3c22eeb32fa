"""The tokenizer half of the vocabulary surgery: behavior tokens as special tokens (no JAX)."""

from __future__ import annotations

import re
from typing import Any

from bsft_jax.behavior.spec import BehaviorSpec


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


def trailing_placeholder_ids(tokenizer: Any, pattern: str | None = None) -> list[int]:
    """Ids of the trailing run of placeholder entries (llama.cpp's ``[PAD151665]``...) in a tokenizer.

    Such entries only fill a checkpoint's spare rows; a tokenizer that still lists them makes
    ``len(tokenizer)`` equal the row count, so the spare rows look used. Only a contiguous run at the
    end counts: a placeholder in the middle is a real id that text can map to.
    """
    # not at module level: this module imports no JAX, and bsft_jax.models' __init__ loads it
    from bsft_jax.models.gguf_convert import PLACEHOLDER_PATTERN

    regex = re.compile(pattern or PLACEHOLDER_PATTERN)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    first = len(tokenizer)
    while first > 0 and regex.fullmatch(by_id.get(first - 1, "")):
        first -= 1
    return list(range(first, len(tokenizer)))
