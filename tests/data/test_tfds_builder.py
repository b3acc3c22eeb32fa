"""TFDS builder: array_record splits by case_id, read back with tfds.data_source, fed to the pipeline."""

import collections
import json
import os

import numpy as np
import pytest

from bsft_jax.data import demo
from bsft_jax.data.pipeline import make_train_iterator
from bsft_jax.data.schema import DataError, record_from_dict, write_jsonl
from bsft_jax.data.tfds_builder import build, data_source, split_by_case

CFG = demo.DemoConfig(num_train=130, num_validation=26, num_test=52, seed=2)


def _read_back(split, data_dir):
    return sorted((record_from_dict(ex) for ex in data_source(split, data_dir=data_dir)), key=lambda r: r.id)


def test_builds_split_files_and_reads_back_identical_records(tmp_path):
    src = demo.demo_dir(CFG, cache_dir=str(tmp_path / "cache"))
    builder = build(src, data_dir=str(tmp_path / "tfds"))
    assert str(builder.version) == "1.0.0" and builder.info.file_format.value == "array_record"
    original = demo.load_demo(config=CFG, cache_dir=str(tmp_path / "cache"))
    for split, records in original.items():
        assert _read_back(split, str(tmp_path / "tfds")) == sorted(records, key=lambda r: r.id)
    hard = sorted((r for r in original["test"] if r.hard), key=lambda r: r.id)
    assert hard and _read_back("test_hard", str(tmp_path / "tfds")) == hard
    assert os.path.isdir(tmp_path / "tfds" / "behavior_bench" / "1.0.0")


def test_pooled_files_are_split_by_case_with_configured_fractions(tmp_path):
    records = [r for recs in demo.generate_demo(CFG).values() for r in recs]
    src = tmp_path / "pooled"
    write_jsonl(records[:100], src / "part-a.jsonl")
    write_jsonl(records[100:], src / "part-b.jsonl")
    data_dir = str(tmp_path / "tfds")
    build(str(src), data_dir=data_dir, split_fractions=(0.7, 0.1, 0.2), split_seed=4)
    splits = {s: _read_back(s, data_dir) for s in ("train", "validation", "test")}
    cases = {s: {r.case_id for r in recs} for s, recs in splits.items()}
    assert not (cases["train"] & cases["validation"] or cases["train"] & cases["test"]
                or cases["validation"] & cases["test"])
    assert sorted(r.id for recs in splits.values() for r in recs) == sorted(r.id for r in records)
    max_case = max(collections.Counter(r.case_id for r in records).values())
    for split, frac in zip(("train", "validation", "test"), (0.7, 0.1, 0.2)):
        assert abs(len(splits[split]) - frac * len(records)) <= max_case, split


def test_split_by_case_is_deterministic_and_validates_fractions():
    records = demo.generate_split("train", 300, seed=9)
    a = split_by_case(records, (0.5, 0.25, 0.25), seed=1)
    assert a == split_by_case(records, (0.5, 0.25, 0.25), seed=1)
    assert a != split_by_case(records, (0.5, 0.25, 0.25), seed=2)
    with pytest.raises(ValueError, match="summing to 1"):
        split_by_case(records, (0.5, 0.5, 0.5))


def test_bad_input_fails_before_anything_is_written(tmp_path):
    splits = demo.generate_demo(CFG)
    src = tmp_path / "src"
    for name, recs in splits.items():
        write_jsonl(recs, src / f"{name}.jsonl")
    write_jsonl(splits["test"] + splits["train"][:1], src / "test.jsonl")  # a train case leaks into test
    with pytest.raises(DataError, match=r"is in both train\.jsonl and test\.jsonl"):
        build(str(src), data_dir=str(tmp_path / "tfds"))
    assert not os.path.exists(tmp_path / "tfds" / "behavior_bench" / "1.0.0")

    write_jsonl(splits["test"], src / "test.jsonl")
    with open(src / "validation.jsonl", "a") as f:
        f.write(json.dumps({**splits["validation"][0].to_json(), "id": "x", "category": "Astrology"}) + "\n")
    with pytest.raises(DataError, match=r"validation\.jsonl:27: field 'category' is 'Astrology'"):
        build(str(src), data_dir=str(tmp_path / "tfds"))
    assert not os.path.exists(tmp_path / "tfds" / "behavior_bench" / "1.0.0")


def test_pipeline_reads_a_tfds_data_source(tmp_path, demo_tok):
    src = demo.demo_dir(CFG, cache_dir=str(tmp_path / "cache"))
    data_dir = str(tmp_path / "tfds")
    build(src, data_dir=data_dir)
    records = demo.load_demo(config=CFG, cache_dir=str(tmp_path / "cache"))["train"]
    kw = dict(seq_len=256, batch_size=4, seed=0, num_epochs=1, packing=False)

    def rows(source):
        out = collections.Counter()
        for b in make_train_iterator(source, demo_tok, **kw):
            for row in range(4):
                n = int(b["segment_ids"][row].sum())
                if n:
                    out[tuple(np.asarray(b["tokens"][row][:n]).tolist())] += 1
        return out

    assert rows(data_source("train", data_dir=data_dir)) == rows(records) and sum(rows(records).values()) == 130
    assert rows(src) == rows(records) + rows(demo.load_demo(config=CFG, cache_dir=str(tmp_path / "cache"))[
        "validation"]) + rows(demo.load_demo(config=CFG, cache_dir=str(tmp_path / "cache"))["test"])
