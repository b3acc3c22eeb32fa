"""Render records with a tokenizer's own chat template, for training (ids + loss mask) and evaluation (prompt).

Styles (``STYLES``):
  behavior_sft          assistant turn = behavior token, then the reply (BehaviorSFT).
  general_sft           assistant turn = the reply (GeneralSFT baseline).
  explicit_instruction  a system prompt describing the behaviors; reply without token (prompting baseline).
  few_shot              k solved examples of the same category from the train split as earlier
                        user/assistant turns (prompting baseline; use :class:`FewShotPool`).

Conversation: [system] + [few-shot turns] + user (the scene transcript, one "Speaker: text" line
per turn, then the options) + assistant. The prompt is split into head (template start and
system prompt), body (user contents) and tail (end of the user turn and the assistant header),
each tokenized separately (the same in training and evaluation), so over-long examples can be
cut from the LEFT of the body, keeping the head when possible and never cutting the target.
Examples whose target alone does not fit are dropped. Both are counted in :class:`FormatStats`.

Works with any HF chat template that renders ``prompt + assistant content + end-of-turn``
(Qwen ChatML, Llama 3 headers); the end-of-turn token (``<|im_end|>``, ``<|eot_id|>``) is found
from the template itself and is part of the target.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.behavior.tokenizer import behavior_token_ids
from bsft_jax.data.reply import NO_CONCERNS_LINE, target_reply
from bsft_jax.data.schema import Record

STYLES: tuple[str, ...] = ("behavior_sft", "general_sft", "explicit_instruction", "few_shot")
_HEAD_MARK = "[[bsft:body-start]]"
_TAIL_MARK = "[[bsft:body-end]]"

BEHAVIOR_DESCRIPTIONS: dict[str, str] = {
    "reactive": "answer exactly the question asked, using only the information given",
    "balanced": "answer or go along with the team, and speak up only if something in the scene warrants it",
    "proactive": "watch the scene unprompted and intervene when something is wrong or missing, otherwise hold back",
}
REPLY_FORMAT_PROMPT = (
    "You are a clinical assistant listening to a care team. Reply on the first line with "
    "'Answer: <letter>' for a multiple-choice question, 'Flag: <issue>' to raise a concern, or "
    f"'{NO_CONCERNS_LINE}' when nothing needs saying; then give one sentence of explanation."
)


def explicit_instruction_prompt(spec: BehaviorSpec) -> str:
    """System prompt of the explicit-instruction baseline: the behaviors, then the reply format."""
    lines = [f"- {n}: {BEHAVIOR_DESCRIPTIONS.get(n, n)}." for n in spec.names]
    return ("Decide which behavior the scene calls for:\n" + "\n".join(lines) + "\n" + REPLY_FORMAT_PROMPT)


def scene_text(record: Record) -> str:
    """The user message: one "Speaker: text" line per turn, then "Options:" and "A. ..." lines."""
    lines = [f"{t.speaker}: {t.text}" for t in record.turns]
    if record.options:
        lines.append("Options:")
        lines.extend(f"{k}. {v}" for k, v in record.options)
    return "\n".join(lines)


class FewShotPool:
    """Solved examples for the few-shot baseline: k records of the same category (other cases).

    Choice is deterministic per (record id, seed), so every run prompts with the same examples.
    """

    def __init__(self, train_records: Sequence[Record], k: int = 3, seed: int = 0):
        self.k, self.seed = k, seed
        self._by_category: dict[str, list[Record]] = {}
        for r in train_records:
            self._by_category.setdefault(r.category, []).append(r)

    def examples_for(self, record: Record) -> list[Record]:
        """Up to k solved records of ``record.category`` whose case differs from the record's."""
        pool = [r for r in self._by_category.get(record.category, []) if r.case_id != record.case_id]
        digest = hashlib.sha1(f"{self.seed}/{record.id}".encode()).hexdigest()
        return random.Random(digest).sample(pool, min(self.k, len(pool)))


@dataclasses.dataclass
class FormatStats:
    """What the formatter did (per process). Truncation keeps the target; dropping skips the example."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens_cut: int = 0


@dataclasses.dataclass(frozen=True)
class Example:
    """One rendered training example: ``input_ids`` = prompt + target; ``loss_mask`` 1 on the target."""

    input_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]
    num_prompt_tokens: int
    tokens_cut: int = 0


class Formatter:
    """Renders records for one tokenizer and style. Thread-safe; counts truncations in ``stats``.

    tokenizer:     an HF tokenizer with a chat template (for ``behavior_sft`` it must already hold the
                   behavior tokens: ``bsft_jax.behavior.extend_tokenizer``).
    style:         one of ``STYLES``.
    few_shot:      a :class:`FewShotPool` (required for ``few_shot``).
    system_prompt: overrides the style's system prompt (None: style default; "" : none).
    label_space:   optional category -> labels; with the prompting styles the allowed first lines
                   are listed in the user message (the fine-tuned styles learn them).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        style: str = "behavior_sft",
        spec: BehaviorSpec | None = None,
        few_shot: FewShotPool | None = None,
        system_prompt: str | None = None,
        label_space: Mapping[str, Sequence[str]] | None = None,
    ):
        if style not in STYLES:
            raise ValueError(f"format style {style!r} is not one of {STYLES}")
        if style == "few_shot" and few_shot is None:
            raise ValueError("style 'few_shot' needs few_shot=FewShotPool(train_records)")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; set tokenizer.chat_template (ChatML, Llama 3 ...)")
        self.tokenizer, self.style, self.spec = tokenizer, style, spec or BehaviorSpec()
        self.few_shot, self.label_space = few_shot, label_space
        if system_prompt is None:
            system_prompt = {"explicit_instruction": explicit_instruction_prompt(self.spec),
                             "few_shot": REPLY_FORMAT_PROMPT}.get(style, "")
        self.system_prompt = system_prompt
        self.behavior_ids = behavior_token_ids(tokenizer, self.spec) if style == "behavior_sft" else {}
        self.end_id, self.end_text = self._find_end_of_turn()
        self.stats = FormatStats()
        self._lock = threading.Lock()

    # -- text ---------------------------------------------------------------------------------
    def assistant_text(self, record: Record) -> str:
        """What the assistant must produce (before the end-of-turn token)."""
        reply = target_reply(record)
        if self.style == "behavior_sft":
            return self.spec.token(record.behavior) + reply
        return reply

    def messages(self, record: Record) -> list[dict[str, str]]:
        """Chat messages up to (not including) the assistant reply."""
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        if self.style == "few_shot":
            for ex in self.few_shot.examples_for(record):
                msgs += [{"role": "user", "content": scene_text(ex)},
                         {"role": "assistant", "content": target_reply(ex)}]
        user = scene_text(record)
        if self.label_space and self.style in ("explicit_instruction", "few_shot"):
            heads = [("Answer: " + x) if record.is_multiple_choice else ("Flag: " + x if x != "none" else
                     NO_CONCERNS_LINE) for x in self.label_space.get(record.category, ())]
            if heads:
                user += "\nReply with one of: " + " | ".join(heads)
        msgs.append({"role": "user", "content": user})
        return msgs

    # -- tokens -------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _template(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _find_end_of_turn(self) -> tuple[int, str]:
        probe = [{"role": "user", "content": "hi"}]
        prompt = self._template(probe, True)
        full = self._template([*probe, {"role": "assistant", "content": "ok"}], False)
        if not full.startswith(prompt) or not full[len(prompt):].startswith("ok"):
            raise ValueError("the chat template does not render an assistant turn as prompt + content; "
                             "bsft_jax cannot find where the reply starts")
        suffix = full[len(prompt) + 2:]
        ids = self._encode(suffix)
        if ids and ids[0] in set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder):
            return ids[0], self.tokenizer.convert_ids_to_tokens(ids[0])
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"the chat template ends an assistant turn with {suffix!r}, which is no special token, "
                             "and the tokenizer has no eos token")
        return self.tokenizer.eos_token_id, self.tokenizer.eos_token

    def _prompt_parts(self, record: Record) -> tuple[list[int], list[int], list[int]]:
        msgs = self.messages(record)
        users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
        msgs = [dict(m) for m in msgs]
        msgs[users[0]]["content"] = _HEAD_MARK + msgs[users[0]]["content"].strip()
        msgs[users[-1]]["content"] = msgs[users[-1]]["content"].strip() + _TAIL_MARK
        for m in msgs:
            if m["role"] != "user":
                m["content"] = m["content"].strip()
        text = self._template(msgs, True)
        if text.count(_HEAD_MARK) != 1 or text.count(_TAIL_MARK) != 1:
            raise ValueError("the chat template altered the message contents; cannot locate the scene text")
        head, rest = text.split(_HEAD_MARK)
        body, tail = rest.split(_TAIL_MARK)
        return self._encode(head), self._encode(body), self._encode(tail)

    def _fit(self, head: list[int], body: list[int], tail: list[int], budget: int | None) -> tuple[list[int], int]:
        """Context ids fitting ``budget`` tokens: cut the body from the left, then the head. (ids, cut)."""
        context = head + body + tail
        if budget is None or len(context) <= budget:
            return context, 0
        cut = len(context) - budget
        if budget >= len(head) + len(tail):
            keep = budget - len(head) - len(tail)
            return head + body[len(body) - keep:] + tail, cut
        return context[cut:], cut

    def render_prompt(self, record: Record, max_len: int | None = None) -> list[int]:
        """Prompt ids ending exactly where the assistant reply starts (after the assistant header).

        For ``behavior_sft`` the behavior token is NOT included: the model chooses it (or the
        evaluator forces it). ``max_len`` bounds the prompt length (left truncation as above).
        """
        ids, cut = self._fit(*self._prompt_parts(record), max_len)
        if cut:
            with self._lock:
                self.stats.truncated += 1
                self.stats.tokens_cut += cut
        return ids

    def render_example(self, record: Record, max_len: int | None = None) -> Example | None:
        """Prompt + target ids and the loss mask (1 on the target: reply tokens + end-of-turn token).

        ``max_len`` bounds the total length; the context is cut from the left, never the target.
        Returns None (and counts it) when even the target plus the assistant header does not fit.
        """
        target = [*self._encode(self.assistant_text(record)), self.end_id]
        head, body, tail = self._prompt_parts(record)
        budget = None if max_len is None else max_len - len(target)
        with self._lock:
            self.stats.examples += 1
            if budget is not None and budget < len(tail) + 1:
                self.stats.dropped += 1
                return None
        context, cut = self._fit(head, body, tail, budget)
        if cut:
            with self._lock:
                self.stats.truncated += 1
                self.stats.tokens_cut += cut
        return Example(tuple(context + target), (0,) * len(context) + (1,) * len(target), len(context), cut)


def render_prompt(record: Record, tokenizer: Any, *, style: str = "behavior_sft", spec: BehaviorSpec | None = None,
                  few_shot: FewShotPool | None = None, max_len: int | None = None, **kwargs: Any) -> list[int]:
    """One-off :meth:`Formatter.render_prompt` (build a :class:`Formatter` once for many records)."""
    return Formatter(tokenizer, style=style, spec=spec, few_shot=few_shot, **kwargs).render_prompt(record, max_len)


def render_example(record: Record, tokenizer: Any, *, style: str = "behavior_sft", spec: BehaviorSpec | None = None,
                   few_shot: FewShotPool | None = None, max_len: int | None = None, **kwargs: Any) -> Example | None:
    """One-off :meth:`Formatter.render_example`."""
    return Formatter(tokenizer, style=style, spec=spec, few_shot=few_shot, **kwargs).render_example(record, max_len)
