"""A seeded mutator of BehaviorBench JSONL records and files, for fuzzing the data loader.

:class:`JsonlMutator` starts from valid records and breaks them the ways real exports break:

* records: wrong types in every field (null, bools, numbers, NaN/Infinity, huge integers, lists,
  objects), empty and whitespace-only strings, huge strings, deep nesting, NUL characters, lone
  surrogates, right-to-left marks and emoji, fields missing, renamed or added, malformed ``turns``
  and ``options``, duplicate keys;
* files (bytes): truncation, bit flips, NUL bytes, bytes that are not UTF-8 (lone continuation bytes,
  overlong forms, a truncated sequence), UTF-8/16/32 byte-order marks at the start or mid-file, CRLF and
  lone CR line ends, duplicated, blank and junk lines (``null``, ``[]``, ``{``, deep ``[[[...``, a
  10,000-digit number, ``1e999999``), lines spliced together.

Every case is reproducible from ``(seed, index)``: ``JsonlMutator(seed).case(index)``.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

BASE_RECORDS: list[dict[str, Any]] = [
    {"id": "r1", "case_id": "c1", "category": "Critical Value Flagging", "group": "balanced",
     "turns": [{"speaker": "Labs", "text": "potassium 6.6 mmol/L."}, {"speaker": "Dr. Kim", "text": "Ok."}],
     "behavior": "balanced", "label": "critical_value", "response": "Flag: critical_value\nK is critical."},
    {"id": "r2", "case_id": "c1", "category": "Image Reasoning",
     "turns": [{"speaker": "Radiology", "text": "Free air under the diaphragm."}],
     "options": {"A": "pleural effusion", "B": "bowel perforation"}, "label": "B", "response": "Answer: B\n."},
    {"id": "r3", "category": "Consistency Check", "turns": [["Case", "Two notes disagree on the allergy."]],
     "label": "none", "hard": True},
    {"id": "r4", "category": "Image Reasoning", "turns": [{"role": "user", "content": "Which finding?"}],
     "options": ["effusion", "pneumothorax", "normal"], "label": "c", "hard": "false"},
]
FIELDS = ("id", "case_id", "category", "group", "turns", "options", "behavior", "label", "response", "hard")


class Raw:
    """JSON text put into a record verbatim (what ``json.dumps`` cannot write: 10,000-digit numbers,
    nesting deeper than Python's recursion limit, ``1e999999``)."""

    def __init__(self, text: str):
        self.text = text


class JsonlMutator:
    """``JsonlMutator(seed).case(i)`` -> ``("file", bytes)`` or ``("record", object)``, deterministic."""

    def __init__(self, seed: int):
        self.seed = seed

    def case(self, index: int) -> tuple[str, Any]:
        rng = random.Random(f"{self.seed}:{index}")
        if rng.random() < 0.3:
            return "record", self._record(rng, raw_ok=False)
        return "file", self._file(rng)

    # ------------------------------------------------------------------ values
    def _value(self, rng: random.Random, raw_ok: bool = True) -> Any:  # noqa: C901  (one branch per kind)
        kind = rng.randrange(24)
        depth = rng.choice([2, 20, 200, 900, 5000, 100_000])
        if kind == 0:
            return None
        if kind == 1:
            return rng.choice([True, False])
        if kind == 2:
            return rng.choice([0, 1, -7, 2**63, -(2**70)])
        if kind == 3:
            return rng.choice([1.5, -0.0, 1e308, float("nan"), float("inf"), float("-inf")])
        if kind == 4:
            return rng.choice(["", " ", "\t\n ", "\u3000"])
        if kind == 5:
            return rng.choice(["x", "é"]) * rng.choice([10_000, 300_000])
        if kind == 6:
            return rng.choice(["a\u0000b", "\u0000", "nul\u0000"])
        if kind == 7:
            return rng.choice(["\ud800", "ok\udfffok", "\udbff\udfff"])  # lone surrogates; the last is a pair
        if kind == 8:
            return rng.choice(["a\u202eb", "🩺 K+ 6.9", "\u200b", "\ufeffbom", "line\r\nbreak"])
        if kind == 9:
            return []
        if kind == 10:
            return {}
        if kind == 11:
            return [rng.choice(["A", 1, None]), {"k": "v"}]
        if kind == 12:
            return {"speaker": rng.choice([1, None, "x"]), "text": rng.choice([[], "y", 2.5])}
        if kind == 13 and raw_ok:
            return Raw("[" * depth + "]" * depth)
        if kind == 14 and raw_ok:
            return Raw('{"a":' * depth + "1" + "}" * depth)
        if kind == 15 and raw_ok:
            return Raw(rng.choice(["9" * 5000, "-" + "1" * 4400, "1e999999", "-1e999999", "1" + "0" * 400]))
        if kind == 16:
            nested: Any = "leaf"
            for _ in range(min(depth, 60)):
                nested = [nested]
            return nested
        if kind == 17:
            return rng.choice(["A", "Z", "AA", "a", "1", "none", "NONE", "critical value!", "critical-value"])
        if kind == 18:
            return rng.choice(["reactive", "balanced", "proactive", "heroic", "Image Reasoning",
                               "Critical Value Flagging", "Mind Reading"])
        if kind == 19:
            return rng.choice(["true", "false", "1", "0", "maybe", "TRUE "])
        if kind == 20:
            return ["effusion"] * rng.choice([0, 1, 2, 27])
        if kind == 21:
            return {k: "opt" for k in rng.sample(["A", "B", "a", "AB", "", " ", "1", "Z"], rng.randint(0, 4))}
        if kind == 22:
            return json.dumps(rng.choice([[{"speaker": "S", "text": "t"}], {"A": "x", "B": "y"}, [], "x"]))
        return rng.choice([b"bytes", "\x7f", "tab\there"]) if not raw_ok else Raw(rng.choice(["[", "]", '"', "nul"]))

    # ------------------------------------------------------------------ records
    def _record(self, rng: random.Random, raw_ok: bool = True) -> dict[str, Any]:
        rec = copy.deepcopy(rng.choice(BASE_RECORDS))
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            op = rng.randrange(8)
            field = rng.choice(FIELDS)
            if op <= 2:
                rec[field] = self._value(rng, raw_ok)
            elif op == 3:
                rec.pop(field, None)
            elif op == 4 and field in rec:
                rec[rng.choice(["Id", "category ", "turn", "labels", "\u0000", ""])] = rec.pop(field)
            elif op == 5:
                rec[rng.choice(["extra", "meta", "x" * 1000])] = self._value(rng, raw_ok)
            elif op == 6:
                turns = rec.get("turns")
                if isinstance(turns, list) and turns:
                    i = rng.randrange(len(turns))
                    turns[i] = rng.choice([self._value(rng, raw_ok), {"speaker": self._value(rng, raw_ok), "text": "t"},
                                           {"speaker": "S", "text": self._value(rng, raw_ok)}, ["S"], ["S", "t", "u"],
                                           {"role": "user"}])
            elif op == 7:
                opts = rec.get("options")
                if isinstance(opts, dict) and opts:
                    opts[rng.choice(list(opts))] = self._value(rng, raw_ok)
                else:
                    rec["options"] = self._value(rng, raw_ok)
        return rec

    @staticmethod
    def _dumps(rec: dict[str, Any], ascii_only: bool) -> str:
        raws: list[str] = []

        def swap(v: Any) -> Any:
            if isinstance(v, Raw):
                raws.append(v.text)
                return f"@@RAW{len(raws) - 1}@@"
            if isinstance(v, dict):
                return {k: swap(x) for k, x in v.items()}
            if isinstance(v, list):
                return [swap(x) for x in v]
            if isinstance(v, bytes):
                return v.decode("latin-1")
            return v

        text = json.dumps(swap(rec), ensure_ascii=ascii_only)
        for i, raw in enumerate(raws):
            text = text.replace(f'"@@RAW{i}@@"', raw)
        return text

    # ------------------------------------------------------------------ files
    def _file(self, rng: random.Random) -> bytes:
        lines = []
        for _ in range(rng.choice([1, 1, 2, 3, 5])):
            rec = self._record(rng) if rng.random() < 0.6 else copy.deepcopy(rng.choice(BASE_RECORDS))
            rec["id"] = rec.get("id") if rng.random() < 0.1 else f"{rec.get('id')}-{len(lines)}"
            try:
                lines.append(self._dumps(rec, rng.random() < 0.5).encode("utf-8", "surrogatepass"))
            except (ValueError, RecursionError):  # json cannot write it: write a junk line instead
                lines.append(b"{")
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.8 else b"")
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            data = self._mutate_bytes(rng, data)
        return data

    def _mutate_bytes(self, rng: random.Random, data: bytes) -> bytes:  # noqa: C901  (one branch per mutation)
        op = rng.randrange(14)
        pos = rng.randrange(len(data) + 1)
        if op == 0:
            return data[:pos]
        if op == 1 and data:
            b = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
            return bytes(b)
        if op == 2:
            return data[:pos] + b"\0" * rng.choice([1, 1, 7]) + data[pos:]
        if op == 3:
            bad = rng.choice([b"\xff", b"\x80", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                              b"\xe2\x82"])
            return data[:pos] + bad + data[pos:]
        if op == 4:
            bom = rng.choice([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"])
            return bom + data
        if op == 5:
            starts = [0] + [i + 1 for i, c in enumerate(data) if c == 10]
            at = rng.choice(starts)
            return data[:at] + b"\xef\xbb\xbf" + data[at:]
        if op == 6:
            return data.replace(b"\n", b"\r\n")
        if op == 7:
            return data.replace(b"\n", b"\r")
        if op == 8:
            lines = data.split(b"\n")
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            return b"\n".join(lines)
        if op == 9:
            junk = rng.choice([b"", b"   ", b"\t", b"null", b"[]", b"1", b'"text"', b"{", b"}", b"{}", b"[" * 100_000,
                               b"9" * 10_000, b"1e999999", b'{"a":' * 50_000, b"\x00", b"NaN", b"true"])
            lines = data.split(b"\n")
            lines.insert(rng.randrange(len(lines) + 1), junk)
            return b"\n".join(lines)
        if op == 10 and data:
            end = min(len(data), pos + rng.randint(1, 200))
            return data[:pos] + data[end:]
        if op == 11:
            return data.replace(b"\n", b"", 1)  # two records on one line
        if op == 12:
            return data.replace(b'"turns"', b'"turns": [], "turns"', 1)  # a duplicate key
        return data.upper() if rng.random() < 0.5 else data.replace(b",", b";", 1)
