"""Schema validation: every malformed line fails with file, line, field and what was expected."""

import json
import os

import pytest

from bsft_jax.behavior import taxonomy
from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.data.reply import candidate_labels, parse_label, reply_head, target_reply
from bsft_jax.data.schema import DataError, Record, Turn, read_dir, read_jsonl, record_from_dict, write_jsonl

GOOD_FLAG = {"id": "r1", "case_id": "c1", "category": "Critical Value Flagging", "group": "balanced",
             "turns": [{"speaker": "Labs", "text": "potassium 6.6 mmol/L."}, {"speaker": "Dr. Kim", "text": "Ok."}],
             "behavior": "balanced", "label": "critical_value", "response": "Flag: critical_value\nK is critical."}
GOOD_MC = {"id": "r2", "case_id": "c1", "category": "Image Reasoning",
           "turns": [{"speaker": "Radiology", "text": "Free air under the diaphragm."}],
           "options": {"A": "pleural effusion", "B": "bowel perforation"}, "label": "B", "response": "Answer: B\n."}


def _write(tmp_path, objs, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    return str(path)


def test_reads_valid_records_with_defaults(tmp_path):
    path = _write(tmp_path, [GOOD_FLAG, "", GOOD_MC])
    flag, mc = read_jsonl(path)
    assert flag.turns[0] == Turn("Labs", "potassium 6.6 mmol/L.") and flag.intervenes
    assert mc.group == "reactive" and mc.behavior == "reactive"  # defaulted from the taxonomy / spec
    assert mc.options == (("A", "pleural effusion"), ("B", "bowel perforation")) and mc.is_multiple_choice
    assert record_from_dict(mc.to_json()) == mc  # JSON round trip


@pytest.mark.parametrize("change, field, expected", [
    ({"category": "Mind Reading"}, "category", "expected one of"),
    ({"group": "proactive"}, "group", "belongs to group 'balanced'"),
    ({"turns": []}, "turns", "at least one turn"),
    ({"turns": [{"speaker": "Dr. Kim"}]}, "turns[0]", "needs keys 'speaker' and 'text'"),
    ({"behavior": "heroic"}, "behavior", "expected one of"),
    ({"label": "critical value!"}, "label", "flag class"),
    ({"options": {"A": "x", "B": "y"}, "label": "C"}, "label", "option keys"),
    ({"options": {"AA": "x", "B": "y"}, "label": "B"}, "options", "single letters"),
    ({"label": None}, "label", "must be a string"),
    ({"hard": "maybe"}, "hard", "true or false"),
])
def test_bad_field_names_line_and_field(tmp_path, change, field, expected):
    bad = {**GOOD_FLAG, **change, "id": "bad"}
    path = _write(tmp_path, [GOOD_FLAG, bad])
    with pytest.raises(DataError) as e:
        read_jsonl(path)
    msg = str(e.value)
    assert f"{path}:2" in msg and f"'{field}'" in msg and expected in msg, msg


def test_missing_field_bad_json_and_duplicate_id(tmp_path):
    missing = {k: v for k, v in GOOD_FLAG.items() if k != "label"}
    with pytest.raises(DataError, match=r"data\.jsonl:1: missing field 'label'"):
        read_jsonl(_write(tmp_path, [missing]))
    with pytest.raises(DataError, match=r"data\.jsonl:2: not valid JSON"):
        read_jsonl(_write(tmp_path, [GOOD_FLAG, '{"id": "x", ']))
    with pytest.raises(DataError, match=r"data\.jsonl:2: field 'id' is 'r1', already used on line 1"):
        read_jsonl(_write(tmp_path, [GOOD_FLAG, GOOD_FLAG]))


def test_field_map_and_category_aliases_read_a_foreign_export(tmp_path):
    foreign = {"uid": "q7", "case": "nejm-17", "task_type": "Omission", "dialogue": [
        {"role": "Dr. A", "content": "Let's give aspirin."}], "answer": "Omission", "output": "Flag: omission"}
    path = _write(tmp_path, [foreign])
    with pytest.raises(DataError, match=r"missing field 'category'.*field_map"):
        read_jsonl(path)
    fmap = {"uid": "id", "case": "case_id", "task_type": "category", "dialogue": "turns", "answer": "label",
            "output": "response"}
    (rec,) = read_jsonl(path, field_map=fmap,
                        category_aliases={"Omission": "Omission Detection in Group Decision-Makings"})
    assert (rec.id, rec.case_id, rec.group, rec.label) == ("q7", "nejm-17", "proactive", "omission")
    assert rec.turns == (Turn("Dr. A", "Let's give aspirin."),)


def test_custom_spec_behaviors(tmp_path):
    spec = BehaviorSpec(names=("quiet", "speak"), category_map={c: "speak" for c in taxonomy.CATEGORY_NAMES})
    (rec,) = read_jsonl(_write(tmp_path, [{**GOOD_FLAG, "behavior": "quiet"}]), spec=spec)
    assert rec.behavior == "quiet"
    with pytest.raises(DataError, match="'behavior' is 'balanced'; expected one of \\['quiet', 'speak'\\]"):
        read_jsonl(_write(tmp_path, [GOOD_FLAG]), spec=spec)


def test_write_jsonl_is_atomic(tmp_path, monkeypatch):
    recs = read_jsonl(_write(tmp_path, [GOOD_FLAG, GOOD_MC]))
    out = tmp_path / "out.jsonl"

    def exploding():
        yield recs[0]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_jsonl(exploding(), out)
    assert not out.exists() and os.listdir(tmp_path) == ["data.jsonl"]  # no partial file, no temp left
    write_jsonl(recs, out)
    assert read_jsonl(out) == recs


def test_read_dir_rejects_ids_shared_across_files(tmp_path):
    _write(tmp_path, [GOOD_FLAG], "a.jsonl")
    _write(tmp_path, [GOOD_MC], "b.jsonl")
    assert [r.id for r in read_dir(tmp_path)] == ["r1", "r2"]
    _write(tmp_path, [GOOD_FLAG], "c.jsonl")
    with pytest.raises(DataError, match="also appears in"):
        read_dir(tmp_path)


def _rec(**kw):
    base = dict(id="x", case_id="x", category="Error Correction", group="proactive",
                turns=(Turn("Dr", "Give it."),), behavior="proactive", label="dose_error")
    return Record(**{**base, **kw})


def test_parse_label_reply_format():
    flag, mc = _rec(), _rec(category="Image Reasoning", group="reactive", label="B",
                            options=(("A", "a"), ("B", "b"), ("C", "c")))
    assert parse_label("Flag: dose_error\nten times the dose", flag) == "dose_error"
    assert parse_label("<|behavior:proactive|>Flag: Dose Error.", flag) == "dose_error"
    assert parse_label("\n  No concerns\nfine", flag) == "none"
    assert parse_label("Flag: none", flag) == "none"
    assert parse_label("**Answer: (c)** because", mc) == "C"
    assert parse_label("Answer: D", mc) is None          # not among the options
    assert parse_label("Flag: dose_error", mc) is None   # wrong format for a multiple-choice task
    assert parse_label("Answer: B", flag) is None
    assert parse_label("I think it is B", mc) is None
    assert parse_label("", flag) is None
    # Training targets always state their label in the parseable format, even if a response does not.
    assert target_reply(_rec(response="The dose is ten times too high.")) == \
        "Flag: dose_error\nThe dose is ten times too high."
    assert target_reply(_rec(response="", label="none")) == "No concerns"
    assert reply_head(mc) == "Answer: B"
    for r in (flag, mc, _rec(label="none")):
        assert parse_label(target_reply(r), r) == r.label
    # Candidate replies for likelihood ranking: option keys, or the category's label space.
    assert candidate_labels(mc) == ("A", "B", "C")
    assert candidate_labels(flag, {"Error Correction": ("dose_error", "none")}) == ("dose_error", "none")
    with pytest.raises(KeyError, match="no label space"):
        candidate_labels(flag)
