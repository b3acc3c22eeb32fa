"""The one machine-readable reply format, and its parser (used by training targets and the evaluator).

A reply's FIRST line carries the label; the rest is free explanation::

    Answer: B                  multiple-choice tasks (label = option key)
    Flag: critical_value       the agent speaks up (label = flag class)
    No concerns                restraint (label = "none")

``parse_label`` reads that line back. It tolerates a leading behavior-token string (when a reply
is decoded with special tokens), surrounding markdown bold, case, and "Flag: none". Anything
else, or a letter that is not among the record's options, or a flag reply to a multiple-choice
task (and vice versa), is unparseable: ``None``, which the evaluator counts as wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from bsft_jax.data.schema import NO_INTERVENTION, Record, normalize_flag_label

NO_CONCERNS_LINE = "No concerns"

_SPECIAL_PREFIX_RE = re.compile(r"^(\s*<\|[^|<>]*\|>)+")
_ANSWER_RE = re.compile(r"^\W*answer\s*[:\-]?\s*\(?([A-Za-z])\)?(?![A-Za-z])", re.IGNORECASE)
_FLAG_RE = re.compile(r"^\W*flag\s*[:\-]\s*([A-Za-z0-9_][A-Za-z0-9_ \-]*)", re.IGNORECASE)
_NONE_RE = re.compile(r"^\W*no\s+concerns?\b", re.IGNORECASE)


def reply_head(record: Record, label: str | None = None) -> str:
    """The first line of a reply that states ``label`` (default: the record's label)."""
    label = record.label if label is None else label
    if record.is_multiple_choice:
        return f"Answer: {label}"
    if label == NO_INTERVENTION:
        return NO_CONCERNS_LINE
    return f"Flag: {label}"


def candidate_labels(record: Record, label_space: Mapping[str, Sequence[str]] | None = None) -> tuple[str, ...]:
    """Labels a reply to ``record`` may state: its option keys, else ``label_space[category]``.

    For flag tasks pass ``bsft_jax.data.schema.label_space(train_records)`` (or the demo's
    ``FLAG_LABELS``); used to rank candidate replies by log-likelihood (score ``reply_head``).
    """
    if record.is_multiple_choice:
        return tuple(k for k, _ in record.options or ())
    labels = tuple((label_space or {}).get(record.category, ()))
    if not labels:
        raise KeyError(f"no label space for category {record.category!r}; pass label_space=label_space(train)")
    return labels


def target_reply(record: Record) -> str:
    """The assistant text to train on (without behavior token).

    The record's ``response`` when it already states its label in the reply format; otherwise the
    canonical head line is put in front, so that a model trained on any export replies parseably.
    """
    response = record.response.strip()
    if response and parse_label(response, record) == record.label:
        return response
    head = reply_head(record)
    return f"{head}\n{response}" if response else head


def parse_label(reply_text: str, record: Record) -> str | None:
    """The label stated by a reply's first line, or None if it states none valid for ``record``."""
    text = _SPECIAL_PREFIX_RE.sub("", reply_text or "")
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        return None
    if record.is_multiple_choice:
        m = _ANSWER_RE.match(line)
        if not m:
            return None
        letter = m.group(1).upper()
        return letter if letter in dict(record.options or ()) else None
    if _NONE_RE.match(line):
        return NO_INTERVENTION
    m = _FLAG_RE.match(line)
    if not m:
        return None
    label = normalize_flag_label(m.group(1))
    return label or None
