"""The embedded demo set: deterministic, complete, content-dependent, cached atomically, own tokenizer."""

import difflib
import itertools
import json
import os
import random
import re

import pytest

from bsft_jax.behavior import taxonomy
from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.behavior.tokenizer import extend_tokenizer
from bsft_jax.data import clinical_facts as cf
from bsft_jax.data import demo
from bsft_jax.data.demo_scenes import FLAG_LABELS, GENERATORS, MC_KEYS, Infeasible, random_patient
from bsft_jax.data.reply import parse_label, target_reply
from bsft_jax.data.schema import NO_INTERVENTION

from .demo_oracle import ORACLE

SMALL = demo.DemoConfig(num_train=130, num_validation=26, num_test=52, seed=3)


@pytest.fixture(scope="module")
def default_splits():
    return demo.generate_demo()


def test_generation_is_deterministic_per_seed():
    a = demo.generate_split("test", 200, seed=7)
    assert a == demo.generate_split("test", 200, seed=7)
    b = demo.generate_split("test", 200, seed=8)
    assert [r.turns for r in a] != [r.turns for r in b]
    assert [r.turns for r in a] != [r.turns for r in demo.generate_split("validation", 200, seed=7)]


def test_default_sizes_cover_all_categories_and_labels(default_splits):
    assert {s: len(r) for s, r in default_splits.items()} == {"train": 5200, "validation": 520, "test": 1040}
    for split, records in default_splits.items():
        counts = demo.label_counts(records)
        assert set(counts) == set(taxonomy.CATEGORY_NAMES)
        for category, labels in counts.items():
            assert sum(labels.values()) == len(records) // 13  # balanced categories
            want = FLAG_LABELS.get(category, MC_KEYS)
            assert set(labels) == set(want), (split, category, labels)
        for r in records:
            assert r.behavior == BehaviorSpec().behavior_for_category(r.category)
            assert r.group == taxonomy.group_of(r.category)
            assert parse_label(r.response, r) == r.label and target_reply(r) == r.response


def test_balanced_and_proactive_have_intervene_and_hold_back(default_splits):
    for category in taxonomy.categories_in("balanced") + taxonomy.categories_in("proactive"):
        for records in default_splits.values():
            labels = [r.label for r in records if r.category == category]
            hold = labels.count(NO_INTERVENTION) / len(labels)
            assert 0.15 < hold < 0.85, (category, hold)  # both behaviors are common, neither is a safe bet


def test_multiple_choice_answers_are_not_positional(default_splits):
    for category in taxonomy.categories_in("reactive"):
        letters = [r.label for r in default_splits["train"] if r.category == category]
        for key in MC_KEYS:  # 400 items, 4 options: expect ~100 each
            assert letters.count(key) > 60, (category, key, letters.count(key))


@pytest.mark.parametrize("category", sorted(FLAG_LABELS))
def test_label_follows_from_content_not_wording(category):
    """Twin scenes (same draws, different forced label) differ only in the planted fact."""
    pairs = 0
    for seed in range(60):
        patient = random_patient(random.Random(seed))
        scenes = {}
        for label in FLAG_LABELS[category]:
            try:
                scenes[label] = GENERATORS[category](random.Random(f"twin{seed}"), patient, force_label=label)
            except Infeasible:  # e.g. a route error for a drug without a classic wrong route
                pass
        for a, b in itertools.combinations(scenes, 2):
            wa = " ".join(t.text for t in scenes[a].turns).split()
            wb = " ".join(t.text for t in scenes[b].turns).split()
            same = sum(m.size for m in difflib.SequenceMatcher(a=wa, b=wb).get_matching_blocks())
            assert [t.speaker for t in scenes[a].turns] == [t.speaker for t in scenes[b].turns]
            assert 0 < max(len(wa), len(wb)) - same <= 15, (a, b, wa, wb)
            assert scenes[a].label != scenes[b].label
            # an independent oracle (test code) reads the flip from the twins' text
            assert [ORACLE[category](scenes[x]) for x in (a, b)] == [a, b], (scenes[a].turns, scenes[b].turns)
            pairs += 1
    assert pairs >= 60


def test_proposed_drug_alone_does_not_give_the_label(default_splits):
    by_drug = {}
    for r in default_splits["train"]:
        if r.category == "Medication Safety Check":
            drug = re.search(r"Let's start (.+?), one of", " ".join(t.text for t in r.turns)).group(1)
            by_drug.setdefault(drug, set()).add(r.label)
    assert set(by_drug) == set(cf.PROPOSED_DRUGS)
    assert all(len(labels) >= 2 and NO_INTERVENTION in labels for labels in by_drug.values()), by_drug


def test_fact_tables_are_self_consistent():
    for lab in cf.LABS:
        lo, hi = map(float, lab.reference)
        assert all(lo <= float(v) <= hi for v in lab.normal), lab.name
        assert lab.near_low or lab.near_high, lab.name
        # values near a critical limit are all outside the reference range, on their side
        assert all(float(v) < lo for v in lab.near_low) and all(float(v) > hi for v in lab.near_high), lab.name
        for g in (lab.near_low, lab.near_high, *(t.values for t in cf.TARGETS), *(r.values for r in cf.RULES)):
            assert list(map(float, g)) == sorted(map(float, g)) and len(set(g)) == len(g)
    for klass, drugs in cf.DRUG_CLASSES.items():
        assert len(drugs) >= 2 and all(cf.CLASS_OF[d] == klass for d in drugs)
    for drug, order_set in cf.ORDER_SETS.items():
        assert len(set(order_set.situations)) == 2, drug
        assert len(set(order_set.doses)) >= 3 and len(set(order_set.routes)) >= 3, drug
        assert not any("," in s for s in order_set.situations), drug  # the card separates fields with commas
    for lab in cf.LABS:
        for high in (False, True):
            g = cf.reference_grid(lab, high)
            values = list(map(float, g))
            assert float(lab.reference[int(high)]) in values and values == sorted(values), lab.name
    for condition, steps in cf.PROTOCOL_STEPS.items():
        assert len(set(steps)) == 5, condition
    needs = {p.need for p in cf.PREREQUISITES}
    assert all(len(set(n)) == 2 and set(n) <= needs for n in cf.ACTIONS.values())
    for classes in cf.ACTIVE_CLASSES.values():
        assert len(classes) >= 3


def test_cache_split_sizes_disjoint_cases_and_atomic_write(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_write = demo.write_jsonl

    def failing_write(records, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real_write(records, path)

    monkeypatch.setattr(demo, "write_jsonl", failing_write)
    with pytest.raises(OSError, match="disk full"):
        demo.demo_dir(SMALL, cache_dir=str(tmp_path))
    assert os.listdir(tmp_path / "demo") == []  # nothing half-written: no final folder, no temp folder
    monkeypatch.setattr(demo, "write_jsonl", real_write)

    folder = demo.demo_dir(SMALL, cache_dir=str(tmp_path))
    splits = demo.load_demo(config=SMALL, cache_dir=str(tmp_path))
    assert {s: len(r) for s, r in splits.items()} == {"train": 130, "validation": 26, "test": 52}
    cases = {s: {r.case_id for r in recs} for s, recs in splits.items()}
    assert not (cases["train"] & cases["validation"] or cases["train"] & cases["test"]
                or cases["validation"] & cases["test"])
    assert any(sum(r.case_id == c for r in splits["train"]) > 1 for c in cases["train"])  # multi-scene cases
    assert splits == demo.generate_demo(SMALL)
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    assert manifest["counts"] == {"train": 130, "validation": 26, "test": 52}
    assert demo.demo_dir(SMALL, cache_dir=str(tmp_path)) == folder  # cached: second call does not regenerate


def test_demo_tokenizer_is_small_chatml_and_fits_scenes(tmp_path, default_splits):
    from transformers import AutoTokenizer

    out = tmp_path / "tok"
    demo.build_demo_tokenizer(demo.tokenizer_corpus(default_splits["train"]), str(out), vocab_size=3072)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert 1000 < len(tok) <= 3072
    assert [tok.convert_tokens_to_ids(s) for s in demo.CHATML_SPECIALS] == [0, 1, 2]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = extend_tokenizer(tok, BehaviorSpec())
    assert sorted(ids.values()) == [len(tok) - 3, len(tok) - 2, len(tok) - 1]
    from bsft_jax.data.format import Formatter

    fmt = Formatter(tok, style="behavior_sft")
    lengths = []
    for r in default_splits["test"][:300]:
        assert tok.decode(tok.encode(r.response, add_special_tokens=False)) == r.response
        lengths.append(len(fmt.render_example(r).input_ids))
    assert 60 < sum(lengths) / len(lengths) < 250 and max(lengths) < 256, (min(lengths), max(lengths))
