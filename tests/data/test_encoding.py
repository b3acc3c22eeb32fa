"""JSONL is read as UTF-8 line by line: bad bytes name file:line:column, a BOM is stripped or named."""

from __future__ import annotations

import pytest

from bsft_jax.data import DataError, generate_split, read_jsonl, write_jsonl


@pytest.fixture()
def jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(generate_split("train", 13, seed=3), str(path))
    return path


def test_invalid_utf8_names_file_line_and_column(jsonl):
    lines = jsonl.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2][:10] + b"\xff" + lines[2][10:]
    jsonl.write_bytes(b"".join(lines))
    with pytest.raises(DataError, match=rf"^{jsonl}:3: not valid UTF-8 \(byte 0xff at column 11\); save the file"):
        read_jsonl(jsonl)


def test_utf8_bom_is_stripped(jsonl):
    plain = read_jsonl(jsonl)
    jsonl.write_bytes(b"\xef\xbb\xbf" + jsonl.read_bytes())
    assert read_jsonl(jsonl) == plain


@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16-LE"), ("utf-32", "UTF-32-LE")])
def test_utf16_and_utf32_exports_are_named(jsonl, encoding, name):
    jsonl.write_bytes(jsonl.read_text(encoding="utf-8").encode(encoding))  # Python writes a little-endian BOM
    with pytest.raises(DataError, match=rf"^{jsonl}:1: the file is {name} .*save it as UTF-8"):
        read_jsonl(jsonl)


def test_non_ascii_text_reads_unchanged(jsonl):
    recs = read_jsonl(jsonl)
    text = jsonl.read_text(encoding="utf-8").replace(recs[0].turns[0].text, "Température 38,5 °C, SpO₂ 91 %")
    jsonl.write_text(text, encoding="utf-8")
    assert read_jsonl(jsonl)[0].turns[0].text == "Température 38,5 °C, SpO₂ 91 %"
