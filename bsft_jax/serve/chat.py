"""The served model as the API sees it: load a run or an HF folder, render chat messages, read replies.

A run directory comes back through the evaluator's own :func:`bsft_jax.evaluate.compare.load_run`
(its newest readable checkpoint, its tokenizer with the behavior tokens, its config); an HF folder or
``builtin:<name>`` through :func:`bsft_jax.models.hf.load_hf` and the folder's tokenizer. Prompts are
the tokenizer's own chat template with the assistant header appended (as
:class:`bsft_jax.data.format.Formatter` renders them); replies stop at the run's stop tokens and the
template's end of turn, exactly the evaluator's ``eos_ids``.

Behavior tokens: a BehaviorSFT run (or an export of one, whose tokenizer holds ``<|behavior:NAME|>``
tokens) starts each reply with one. :class:`ReplyText` reads it off the first generated token (as
:func:`bsft_jax.evaluate.core.split_reply` does) and keeps it out of the text; a model without behavior
tokens has ``behavior_ids = None`` and its replies carry no behavior.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bsft_jax import storage
from bsft_jax.behavior.spec import DEFAULT_TOKEN_FORMAT, BehaviorSpec
from bsft_jax.data.format import Formatter
from bsft_jax.errors import UserError
from bsft_jax.evaluate.compare import load_run  # the evaluator's loader
from bsft_jax.evaluate.core import split_reply
from bsft_jax.evaluate.metrics import UNPARSED
from bsft_jax.models.decoder import Decoder
from bsft_jax.models.hf import load_hf
from bsft_jax.setup.model_setup import load_tokenizer

log = logging.getLogger("bsft_jax.serve")


class ServeError(UserError, ValueError):
    """The server cannot start with what it was given (no model, a model without a chat template...)."""


@dataclasses.dataclass
class ServedModel:
    """One model behind the API.

    name:          the model id clients send (``/v1/models`` lists it).
    behavior_ids:  behavior name -> token id; None for a model without behavior tokens.
    eos_ids:       ids that end a reply (run stop tokens + the chat template's end of turn).
    max_context:   prompt + reply tokens allowed per request.
    """

    name: str
    model: Decoder
    tokenizer: Any
    behavior_ids: dict[str, int] | None
    eos_ids: tuple[int, ...]
    max_context: int
    pad_id: int
    source: str

    @property
    def behaviors(self) -> list[str]:
        return sorted(self.behavior_ids or {})

    def prompt_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The chat template over ``messages`` plus the assistant header, as ids (Formatter's rendering)."""
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def text(self, ids: Sequence[int]) -> str:
        """Reply ids -> text, special tokens (behavior tokens included) skipped as the evaluator does."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def load_served(*, checkpoint: str = "", hf_path: str = "", step: int | None = None, dtype: str = "float32",
                name: str = "", max_context: int = 0) -> ServedModel:
    """Loads ``checkpoint`` (a training run directory) or ``hf_path`` (an HF folder or ``builtin:<name>``)."""
    if bool(checkpoint) == bool(hf_path):
        raise ServeError("give exactly one of --checkpoint RUN_DIR or --hf_path DIR|builtin:NAME")
    if checkpoint:
        if not storage.isdir(checkpoint):
            raise ServeError(f"--checkpoint={checkpoint!r} is not a folder; point it at a training run directory")
        model, tokenizer, run_settings, style, step_read = load_run(checkpoint, step, dtype, None)
        spec = run_settings.behavior.spec if style == "behavior_sft" else None
        source = f"{checkpoint}@{step_read}"
        default_name = storage.basename(checkpoint.rstrip("/"))
    else:
        model, _ = load_hf(hf_path, dtype=dtype)
        tokenizer = load_tokenizer(hf_path)
        spec = behavior_spec_of(tokenizer)
        source = hf_path
        default_name = hf_path.split(":", 1)[1] if hf_path.startswith("builtin:") else os.path.basename(
            hf_path.rstrip("/"))
    try:
        formatter = Formatter(tokenizer, style="behavior_sft" if spec else "general_sft", spec=spec)
    except ValueError as e:
        raise ServeError(f"{source}: {e}") from None
    context = model.config.max_position_embeddings
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return ServedModel(
        name=name or default_name, model=model, tokenizer=tokenizer,
        behavior_ids=dict(formatter.behavior_ids) if spec else None,
        eos_ids=tuple(sorted({*model.config.stop_token_ids, formatter.end_id})),
        max_context=min(context, max_context) if max_context > 0 else context, pad_id=int(pad_id), source=source)


def behavior_spec_of(tokenizer: Any, token_format: str = DEFAULT_TOKEN_FORMAT) -> BehaviorSpec | None:
    """The behavior tokens an exported tokenizer holds (``<|behavior:NAME|>`` special tokens), or None."""
    pattern = re.compile(re.escape(token_format).replace(re.escape("{name}"), r"(\w+)"))
    vocab = tokenizer.get_vocab()
    found = sorted((vocab[t], m.group(1)) for t in tokenizer.all_special_tokens if (m := pattern.fullmatch(t)))
    if not found:
        return None
    return BehaviorSpec(names=tuple(n for _, n in found), token_format=token_format)


class ReplyText:
    """Turns one row's generated ids into the API's reply, piece by piece.

    :meth:`feed` takes the ids generated since the last call and returns the new text to send. The
    first id is read as the behavior (when the model has behavior tokens); the EOS is dropped; text
    is held back while it could still be the start of a ``stop`` string or ends in a partial UTF-8
    character. A matched stop string ends the reply (``stopped``), and is not part of the text.
    """

    def __init__(self, served: ServedModel, stops: Sequence[str] = ()):
        self.served, self.stops = served, [s for s in stops if s]
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False
        self.behavior: str | None = None

    @property
    def holdback(self) -> int:
        return max((len(s) for s in self.stops), default=1) - 1

    def feed(self, new_ids: Sequence[int], finished: bool) -> str:
        """New reply text since the last call (all of the rest once ``finished`` or stopped)."""
        if self.stopped:
            return ""
        first = not self.ids
        self.ids.extend(new_ids)
        behavior, body = split_reply(self.ids, self.served.behavior_ids, self.served.eos_ids)
        if first and self.ids and behavior not in (None, UNPARSED):
            self.behavior = behavior
        text = self.served.text(body)
        for stop in self.stops:
            at = text.find(stop, max(0, self.sent - len(stop) + 1))
            if at >= 0:
                text, self.stopped = text[:at], True
        self.text = text
        end = len(text)
        if not (finished or self.stopped):
            end = max(self.sent, end - self.holdback)
            while end > self.sent and text[end - 1] == "\ufffd":
                end -= 1
        piece = text[self.sent:end]
        self.sent = max(self.sent, end)
        return piece
