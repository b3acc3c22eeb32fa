"""BehaviorBench record schema: one JSON object per line, validated with errors that name the place.

A record is one task: a multi-turn clinical scene (``turns``), optionally multiple-choice ``options``,
and the target: the ``behavior`` token name, the discrete ``label`` the metric scores (an option
letter, a flag class, or ``none`` when restraint is right) and the agent's ``response`` text.

JSON form (field names can be remapped with ``field_map`` so a foreign export reads unchanged)::

    {"id": "c17-3", "case_id": "c17", "category": "Critical Value Flagging", "group": "balanced",
     "turns": [{"speaker": "Labs", "text": "Potassium 6.9 mmol/L ..."}, {"speaker": "Dr. Kim", "text": "..."}],
     "options": {"A": "...", "B": "..."},           # optional; also a list of strings, or [{"key", "text"}]
     "behavior": "balanced", "label": "critical_value", "response": "Flag: critical_value\\n...",
     "hard": false}

Defaults for absent fields: ``id`` = "<file>:<line>", ``case_id`` = ``id``, ``group`` = the category's
group, ``behavior`` = ``spec.behavior_for_item(category, label, multiple_choice)``, ``response`` = ""
(the formatter then trains on the canonical reply head built from the label), ``hard`` = false.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import reprlib
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from bsft_jax import storage
from bsft_jax.behavior import taxonomy
from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.errors import UserError
from bsft_jax.files import atomic_write

NO_INTERVENTION = "none"  # the label of scenes where holding back is the right behavior
_FLAG_LABEL_RE = re.compile(r"^[a-z0-9_]+$")
_OPTION_KEY_RE = re.compile(r"^[A-Z]$")
_FIELDS = ("id", "case_id", "category", "group", "turns", "options", "behavior", "label", "response", "hard")


class DataError(UserError, ValueError):
    """A data file (or record) does not match the BehaviorBench schema. The message names where and what."""


# Values quoted in errors: short, and safe for any input (a 300 kB string, a list nested 900 deep).
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def _show(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters, without recursing into deep nesting."""
    return _REPR.repr(value)


def _loads(text: str | bytes, where: str, what: str = "", hint: str = "") -> Any:
    """``json.loads`` with every way it can fail as one :class:`DataError` naming ``where`` (and ``what``:
    a field holding JSON text)."""
    subject = f"{what} is " if what else ""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: {subject}not valid JSON ({e.msg} at column {e.colno}){hint}") from None
    except RecursionError:  # e.g. 100,000 "[" in a row: json recurses once per level
        raise DataError(f"{where}: {subject}not valid JSON here: arrays or objects nested too deeply (the limit is "
                        f"about {sys.getrecursionlimit():,} levels){hint}") from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise DataError(f"{where}: {subject}not valid JSON here ({str(e).split(':')[0]}){hint}") from None


@dataclasses.dataclass(frozen=True)
class Turn:
    """One utterance or context block of a scene (speaker: "Dr. Kim", "Patient", "Labs", "Case", ...)."""

    speaker: str
    text: str


@dataclasses.dataclass(frozen=True)
class Record:
    """One BehaviorBench task. Immutable; ``options`` is a tuple of (key, text) pairs or None."""

    id: str
    case_id: str
    category: str
    group: str
    turns: tuple[Turn, ...]
    behavior: str
    label: str
    response: str = ""
    options: tuple[tuple[str, str], ...] | None = None
    hard: bool = False

    @property
    def is_multiple_choice(self) -> bool:
        """True when the label is an option key (reactive tasks)."""
        return self.options is not None

    @property
    def intervenes(self) -> bool:
        """True when the right reply speaks up (a flag label); False for restraint (``none``) and MC."""
        return not self.is_multiple_choice and self.label != NO_INTERVENTION

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines form (inverse of :func:`record_from_dict`)."""
        out: dict[str, Any] = {
            "id": self.id, "case_id": self.case_id, "category": self.category, "group": self.group,
            "turns": [{"speaker": t.speaker, "text": t.text} for t in self.turns],
        }
        if self.options is not None:
            out["options"] = dict(self.options)
        out.update(behavior=self.behavior, label=self.label, response=self.response, hard=self.hard)
        return out


# ----------------------------------------------------------------------------- parsing
def _text(value: Any, where: str, field: str, *, allow_empty: bool = False) -> str:
    if isinstance(value, bytes):  # tfds text features come back as bytes
        value = value.decode("utf-8")
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise DataError(f"{where}: field '{field}' must be a string, got {type(value).__name__} {_show(value)}")
    value = str(value).strip()
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate from a "\ud800" escape: no text can hold it
        raise DataError(f"{where}: field '{field}' holds the unpaired surrogate {value[e.start]!r} (an escape such "
                        "as \\ud800 without its pair); fix the text") from None
    if not value and not allow_empty:
        raise DataError(f"{where}: field '{field}' is empty; expected a non-empty string")
    return value


def _parse_turns(value: Any, where: str) -> tuple[Turn, ...]:
    if isinstance(value, str | bytes):  # serialized (tfds) form
        value = _loads(value, where, "field 'turns' (a string)")
    if not isinstance(value, list | tuple):
        raise DataError(f"{where}: field 'turns' must be a list of {{speaker, text}} objects, got "
                        f"{type(value).__name__}")
    if not value:
        raise DataError(f"{where}: field 'turns' is empty; a scene needs at least one turn")
    turns = []
    for i, t in enumerate(value):
        if isinstance(t, Turn):
            turns.append(t)
            continue
        if isinstance(t, list | tuple) and len(t) == 2:
            t = {"speaker": t[0], "text": t[1]}
        if not isinstance(t, Mapping):
            raise DataError(f"{where}: field 'turns[{i}]' must be an object with 'speaker' and 'text', "
                            f"got {_show(t)}")
        # Common foreign spellings of the two keys (chat exports use role/content).
        speaker = next((t[k] for k in ("speaker", "role", "name") if k in t), None)
        text = next((t[k] for k in ("text", "content", "utterance") if k in t), None)
        if speaker is None or text is None:
            raise DataError(f"{where}: field 'turns[{i}]' needs keys 'speaker' and 'text' (or role/content), "
                            f"got keys {_show(sorted(map(str, t)))}")
        turns.append(Turn(_text(speaker, where, f"turns[{i}].speaker"), _text(text, where, f"turns[{i}].text")))
    return tuple(turns)


def _parse_options(value: Any, where: str) -> tuple[tuple[str, str], ...] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes):
        if not value:
            return None
        value = _loads(value, where, "field 'options' (a string)")
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list | tuple):
        if not value:
            return None
        pairs = _option_pairs_from_list(value, where)
    else:
        raise DataError(f"{where}: field 'options' must be an object {{letter: text}} or a list, "
                        f"got {type(value).__name__}")
    return _checked_options(pairs, where)


def _option_pairs_from_list(value: Sequence[Any], where: str) -> list[tuple[Any, Any]]:
    """(key, text) pairs of a list of options: bare texts (letters in order), [key, text] or {key, text}."""
    if all(isinstance(v, str) for v in value):  # bare option texts: letters in order
        return [(chr(ord("A") + i), v) for i, v in enumerate(value)]
    pairs = []
    for i, v in enumerate(value):
        if isinstance(v, Mapping) and ("key" in v or "label" in v) and "text" in v:
            pairs.append((v.get("key", v.get("label")), v["text"]))
        elif isinstance(v, list | tuple) and len(v) == 2:
            pairs.append((v[0], v[1]))
        else:
            raise DataError(f"{where}: field 'options[{i}]' must be a string, [key, text] or "
                            f"{{key, text}}, got {_show(v)}")
    return pairs


def _checked_options(pairs: Sequence[tuple[Any, Any]], where: str) -> tuple[tuple[str, str], ...]:
    """Validated options: single upper-case letter keys, non-empty texts, no duplicates, at least two."""
    out = []
    for key, text in pairs:
        key = _text(key, where, "options key").upper()
        if not _OPTION_KEY_RE.match(key):
            raise DataError(f"{where}: field 'options' has key {_show(key)}; expected single letters A, B, C, ...")
        out.append((key, _text(text, where, f"options[{key}]")))
    if len({k for k, _ in out}) != len(out):
        raise DataError(f"{where}: field 'options' has duplicate keys {_show([k for k, _ in out])}")
    if len(out) < 2:
        raise DataError(f"{where}: field 'options' has {len(out)} option(s); a multiple-choice task needs >= 2")
    return tuple(out)


def normalize_flag_label(label: str) -> str:
    """Canonical spelling of a flag label: lower case, spaces and dashes as underscores."""
    return re.sub(r"[\s\-]+", "_", label.strip().lower())


def _renamed_fields(obj: Mapping[str, Any], field_map: Mapping[str, str] | None, where: str) -> dict[str, Any]:
    """The record's fields under our names (``field_map`` applied), with the required ones present."""
    if not isinstance(obj, Mapping):
        raise DataError(f"{where}: expected a JSON object per line, got {type(obj).__name__}")
    data: dict[str, Any] = {}
    for key, value in obj.items():
        key = key.decode() if isinstance(key, bytes) else key
        target = (field_map or {}).get(key, key)
        if target in data:
            raise DataError(f"{where}: field '{target}' given twice (once through field_map from '{key}')")
        data[target] = value
    for required in ("category", "turns", "label"):
        if required not in data:
            hint = f" (field_map renames {dict(field_map)})" if field_map else " (use field_map for foreign names)"
            raise DataError(f"{where}: missing field '{required}'; record has fields {_show(sorted(data))}{hint}")
    return data


def _category_and_group(data: Mapping[str, Any], category_aliases: Mapping[str, str] | None,
                        where: str) -> tuple[str, str]:
    """The taxonomy category (aliases applied) and its group; a given ``group`` must agree with it."""
    category = _text(data["category"], where, "category")
    category = (category_aliases or {}).get(category, category)
    if category not in taxonomy.CATEGORY_BY_NAME:
        raise DataError(f"{where}: field 'category' is {_show(category)}; expected one of "
                        f"{list(taxonomy.CATEGORY_NAMES)} (or map it with category_aliases)")
    group = taxonomy.group_of(category)
    if data.get("group") not in (None, "", b""):
        given = _text(data["group"], where, "group")
        if given != group:
            raise DataError(f"{where}: field 'group' is {_show(given)} but category {category!r} belongs to group "
                            f"{group!r}")
    return category, group


def _parse_label(value: Any, options: tuple[tuple[str, str], ...] | None, where: str) -> str:
    """An option key (upper case, among ``options``) or a normalised flag class (or ``none``)."""
    label = _text(value, where, "label")
    if options is not None:
        label = label.upper()
        if label not in dict(options):
            raise DataError(f"{where}: field 'label' is {_show(label)}; expected one of the option keys "
                            f"{[k for k, _ in options]}")
    else:
        label = normalize_flag_label(label)
        if not _FLAG_LABEL_RE.match(label):
            raise DataError(f"{where}: field 'label' is {_show(label)}; expected a flag class of letters, digits and "
                            f"underscores, or {NO_INTERVENTION!r} when restraint is right")
    return label


def _parse_behavior(value: Any, spec: BehaviorSpec, category: str, label: str, multiple_choice: bool,
                    where: str) -> str:
    """The given behavior token name (one of ``spec.names``), or the spec's default for the item."""
    if value in (None, "", b""):
        return spec.behavior_for_item(category, label, multiple_choice)
    behavior = _text(value, where, "behavior")
    if behavior not in spec.names:
        raise DataError(f"{where}: field 'behavior' is {_show(behavior)}; expected one of {list(spec.names)}")
    return behavior


def _parse_hard(value: Any, where: str) -> bool:
    """A boolean from a bool, 0/1, a numpy scalar (tfds) or the strings true/false/1/0/""."""
    hard = value
    if hasattr(hard, "item") and not isinstance(hard, str | bytes):  # numpy scalars from tfds sources
        hard = hard.item()
    if isinstance(hard, str | bytes):
        hard_s = hard.decode() if isinstance(hard, bytes) else hard
        if hard_s.strip().lower() not in ("true", "false", "1", "0", ""):
            raise DataError(f"{where}: field 'hard' is {_show(hard_s)}; expected true or false")
        hard = hard_s.strip().lower() in ("true", "1")
    if not isinstance(hard, bool | int) and hard is not None:
        raise DataError(f"{where}: field 'hard' must be a boolean, got {type(hard).__name__}")
    return bool(hard)


def record_from_dict(
    obj: Mapping[str, Any],
    *,
    spec: BehaviorSpec | None = None,
    field_map: Mapping[str, str] | None = None,
    category_aliases: Mapping[str, str] | None = None,
    where: str = "record",
) -> Record:
    """Validates one JSON object (already decoded) and returns a :class:`Record`.

    field_map:         foreign field name -> our field name, e.g. ``{"task_type": "category"}``.
    category_aliases:  foreign category name -> one of ``taxonomy.CATEGORY_NAMES``.
    where:             prefix of error messages (``file:line``).
    Raises :class:`DataError` naming ``where``, the field and what was expected.
    """
    spec = spec or BehaviorSpec()
    data = _renamed_fields(obj, field_map, where)
    category, group = _category_and_group(data, category_aliases, where)
    record_id = _text(data["id"], where, "id") if data.get("id") not in (None, "") else where
    case_id = _text(data["case_id"], where, "case_id") if data.get("case_id") not in (None, "") else record_id
    turns = _parse_turns(data["turns"], where)
    options = _parse_options(data.get("options"), where)
    label = _parse_label(data["label"], options, where)
    behavior = _parse_behavior(data.get("behavior"), spec, category, label, options is not None, where)
    response = _text(data.get("response") or "", where, "response", allow_empty=True)
    hard = _parse_hard(data.get("hard", False), where)
    return Record(id=record_id, case_id=case_id, category=category, group=group, turns=turns, behavior=behavior,
                  label=label, response=response, options=options, hard=hard)


# Byte-order marks of encodings other than UTF-8: named in the error instead of decoded as garbage.
_FOREIGN_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32-LE"), (b"\x00\x00\xfe\xff", "UTF-32-BE"),
                 (b"\xff\xfe", "UTF-16-LE"), (b"\xfe\xff", "UTF-16-BE"))


def _utf8_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file; a UTF-8 byte-order mark (Excel, Notepad) is dropped.

    Raises :class:`DataError` naming ``file:line`` and the column of the first byte that is not
    UTF-8, or the encoding whose byte-order mark starts the file (UTF-16/32 exports).
    """
    with storage.open_file(path, "rb") as f:  # a local path or gs://
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1:
                for bom, encoding in _FOREIGN_BOMS:
                    if raw.startswith(bom):
                        raise DataError(f"{path}:1: the file is {encoding} (it starts with that byte-order mark); "
                                        "save it as UTF-8")
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                column = len(raw[:e.start].decode("utf-8", "replace")) + 1
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column}); "
                                "save the file as UTF-8") from None


def read_jsonl(
    path: str | os.PathLike,
    *,
    field_map: Mapping[str, str] | None = None,
    spec: BehaviorSpec | None = None,
    category_aliases: Mapping[str, str] | None = None,
) -> list[Record]:
    """Reads and validates a BehaviorBench JSON-lines file. Blank lines are skipped.

    Raises :class:`DataError` at the first bad line, naming ``file:line``, the field and what was
    expected (unknown category, group/category mismatch, empty turns, label not among options,
    unknown behavior, bad JSON, duplicate id ...). Whatever the bytes (truncated, not UTF-8, nested
    100,000 deep, 10,000-digit numbers, lone surrogates), that is the only way it fails: a seeded
    fuzzer checks it (tests/data/test_fuzz_schema.py).
    """
    return [rec for _, rec in _numbered_records(os.fspath(path), field_map=field_map, spec=spec,
                                                category_aliases=category_aliases)]


def _numbered_records(path: str, **parse: Any) -> Iterator[tuple[int, Record]]:
    """``(line number, record)`` of each non-blank line of a JSONL file (see :func:`read_jsonl`)."""
    seen: dict[str, int] = {}
    for lineno, line in _utf8_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        obj = _loads(line, where, hint="; expected one JSON object per line")
        rec = record_from_dict(obj, where=where, **parse)
        if rec.id in seen:
            raise DataError(f"{where}: field 'id' is {_show(rec.id)}, already used on line {seen[rec.id]}; ids must "
                            "be unique within a file")
        seen[rec.id] = lineno
        yield lineno, rec


def write_jsonl(records: Iterable[Record], path: str | os.PathLike) -> None:
    """Writes records as JSON lines atomically (temp file + rename: a failure leaves no partial file)."""
    with atomic_write(path) as f:
        for rec in records:
            f.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")


def read_dir(
    directory: str | os.PathLike,
    *,
    field_map: Mapping[str, str] | None = None,
    spec: BehaviorSpec | None = None,
    category_aliases: Mapping[str, str] | None = None,
) -> list[Record]:
    """All ``*.jsonl`` files of a directory, in name order; ids must be unique across files."""
    directory = os.fspath(directory)
    files = sorted(f for f in storage.listdir(directory) if f.endswith(".jsonl"))
    if not files:
        raise DataError(f"{directory}: no *.jsonl files found")
    records: list[Record] = []
    seen: dict[str, str] = {}
    for name in files:
        path = storage.join(directory, name)
        for lineno, rec in _numbered_records(path, field_map=field_map, spec=spec, category_aliases=category_aliases):
            if rec.id in seen:
                raise DataError(f"{path}:{lineno}: record id {_show(rec.id)} also appears in {seen[rec.id]}; ids "
                                "must be unique across the files of a folder")
            seen[rec.id] = f"{path}:{lineno}"
            records.append(rec)
    return records


def label_space(records: Sequence[Record]) -> dict[str, tuple[str, ...]]:
    """category -> sorted labels seen in ``records`` (what the evaluator scores macro-F1 over)."""
    out: dict[str, set[str]] = {}
    for r in records:
        out.setdefault(r.category, set()).add(r.label)
    return {c: tuple(sorted(v)) for c, v in out.items()}
