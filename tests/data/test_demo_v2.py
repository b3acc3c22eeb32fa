"""Demo v2: surface words do not decide the label, a reader of the scene's relations does, the
item-level behavior token is a real decision, and test scenes are not copies of train scenes.

The rule oracle below is written from the scene TEXT only (regular expressions and comparisons); it
does not import the generator or the fact tables.
"""

import re
from collections import Counter

import pytest

from bsft_jax.behavior import BehaviorSpec, taxonomy
from bsft_jax.data import audit, demo
from bsft_jax.data.schema import NO_INTERVENTION
from bsft_jax.run.config import ConfigError, default_config, validate_config
from bsft_jax.run.settings import BehaviorSettings

NUM = r"(\d+(?:\.\d+)?)"
FLAG_GROUPS = taxonomy.categories_in("balanced") + taxonomy.categories_in("proactive")


@pytest.fixture(scope="module")
def splits():
    return demo.generate_demo(demo.DemoConfig(), spec=BehaviorSpec.item_scheme())


# ----------------------------------------------------------------------------- the rule oracle
def _turn(r, speaker=None, index=None):
    if index is not None:
        return r.turns[index].text
    return next(t.text for t in r.turns if t.speaker == speaker)


def _critical(r):
    hits = re.findall(r"\b(\d+(?:\.\d+)?)(?: [^;()]+)? \(critical (above|below) (\d+(?:\.\d+)?)\)", _turn(r, "Chart"))
    assert len(hits) == 4, r.turns
    past = any(float(v) > float(t) if d == "above" else float(v) < float(t) for v, d, t in hits)
    return "critical_value" if past else NO_INTERVENTION


def _restraint(r):
    m = re.search(r"Team target: (.+?) (at most|at least) " + NUM, _turn(r, "Chart"))
    value = float(re.search(re.escape(m.group(1)) + r" is " + NUM, _turn(r, index=1)).group(1))
    bad = value > float(m.group(3)) if m.group(2) == "at most" else value < float(m.group(3))
    return "intervene" if bad else NO_INTERVENTION


def _medication(r):
    allergies = re.search(r"Allergies: (.+?)\. Home", _turn(r, "Chart")).group(1)
    allergies = set(re.split(r", | and ", allergies))
    alert = re.search(r"do not combine with (.+?)\.$", _turn(r, "Reference")).group(1)
    klass = re.search(r"one of the (.+?)\.$", _turn(r, index=2)).group(1)
    if klass in allergies:
        return "allergy_conflict"
    return "drug_interaction" if klass == alert else NO_INTERVENTION


def _ambiguity(r):
    active = re.search(r"Active medicines: (.+?)\. Stopped", _turn(r, "Chart")).group(1)
    classes = Counter(re.findall(r"\((\w+)\)", active))
    klass = re.search(r"(\w+) now\.$", _turn(r, index=1)).group(1)
    return "clarify" if classes[klass] >= 2 else NO_INTERVENTION


def _omission(r):
    steps = re.search(r": (.+)\.$", _turn(r, "Reference")).group(1).split("; ")
    plan = _turn(r, index=2)
    return "omission" if any(s not in plan for s in steps) else NO_INTERVENTION


def _error(r):
    problem = re.search(r"Current problem: (.+)\.$", _turn(r, "Chart")).group(1)
    card = _turn(r, "Reference").split(": ", 1)[1]
    regimens = {s.strip(): (d, rt) for s, d, rt in re.findall(r"([^:;]+): dose ([^,]+), route ([^;]+?)[;.]", card)}
    dose, route = re.search(r"dose ([^,]+), route (.+)\.$", _turn(r, index=2)).groups()
    want_dose, want_route = regimens[problem]
    if dose != want_dose:
        return "dose_error"
    return "route_error" if route != want_route else NO_INTERVENTION


def _consistency(r):
    chart, line = _turn(r, "Chart"), _turn(r, index=1)
    if "Booked for surgery" in chart:
        booked = re.search(r"on the (left|right) ", chart).group(1)
        bad = re.search(r"says (left|right) ", line).group(1) != booked
    elif "Allergies" in chart:
        bad = re.search(r"Allergies: (.+?)\.", chart).group(1) != re.search(r"came from (.+?)\.$", line).group(1)
    else:
        before = float(re.search(r"yesterday: " + NUM + r" kg", chart).group(1))
        bad = abs(float(re.search(NUM + r" kg", line).group(1)) - before) > 5
    return "inconsistency" if bad else NO_INTERVENTION


def _missing(r):
    need = re.search(r"confirm (.+)\.$", _turn(r, "Reference")).group(1)
    notes = re.search(r"Notes: (.+)\.$", _turn(r, "Chart")).group(1).split("; ")
    return NO_INTERVENTION if any(n.startswith(need + ":") for n in notes) else "missing_info"


def _guideline(r):
    card = _turn(r, "Reference")
    threshold = float(re.search(NUM, card).group(1))
    value = float(re.findall(NUM, _turn(r, "Chart").split(";", 1)[1])[0])
    if "at least" in card:
        ok = value >= threshold
    elif "below" in card:
        ok = value < threshold
    else:  # "within" / "at most"
        ok = value <= threshold
    return NO_INTERVENTION if ok else "deviation"


_DAYS = {"a week before admission": -7, "three days before admission": -3, "the day before admission": -1,
         "on admission": 0, "on hospital day 2": 2, "on hospital day 5": 5}


def _option(r, text):
    return next(k for k, v in r.options if v.lower() == text.lower())


def _lab(r):
    pattern = r"(\w+) " + NUM + r"[^;()]* \(reference " + NUM + "-" + NUM + r"\)"
    for name, value, lo, hi in re.findall(pattern, _turn(r, "Chart")):
        if not float(lo) <= float(value) <= float(hi):
            return _option(r, name)
    raise AssertionError(r.turns)


def _image(r):
    region = re.search(r"about the (.+)\?$", _turn(r, index=1)).group(1)
    report = dict(x.split(": ") for x in re.search(r"report: (.+)\.$", _turn(r, "Chart")).group(1).split("; "))
    return _option(r, report[region])


def _ddx(r):
    presents = _turn(r, "Chart")
    card = re.search(r"card: (.+)\.$", _turn(r, "Reference")).group(1).split("; ")
    dx = [d for feat, d in (c.split(" suggests ") for c in card) if feat in presents]
    assert len(dx) == 1, (presents, card)
    return _option(r, dx[0])


def _temporal(r):
    story = _turn(r, "Chart")
    events = {e: _DAYS[w.lower()] for w, e in re.findall(r"(" + "|".join(_DAYS) + r"), ([^.]+)\.", story, re.I)}
    pick = min if "first" in _turn(r, index=1) else max
    return _option(r, pick(events, key=events.get))


ORACLE = {
    "Critical Value Flagging": _critical, "Intervention Restraint": _restraint,
    "Medication Safety Check": _medication, "Ambiguity Clarification": _ambiguity,
    "Omission Detection in Group Decision-Makings": _omission, "Error Correction": _error,
    "Consistency Check": _consistency, "Missing Information Request": _missing,
    "Guideline Deviation Alert": _guideline, "Lab Result Interpretation": _lab, "Image Reasoning": _image,
    "Differential Diagnosis (DDX) Reasoning": _ddx, "Temporal Ordering": _temporal,
}


def test_rule_oracle_reading_the_scene_scores_100(splits):
    assert set(ORACLE) == set(taxonomy.CATEGORY_NAMES)
    for split in ("train", "test"):
        for r in splits[split]:
            assert ORACLE[r.category](r) == r.label, (r.category, r.label, r.turns, r.options)


# ----------------------------------------------------------------------------- the surface probe
def test_surface_probe_cannot_decide_intervene_vs_hold(splits):
    scores = audit.probe_scores(splits["train"], splits["test"], full_label=False)
    print("surface probe macro-F1:", {k: round(v, 1) for k, v in scores.items()})
    for category in FLAG_GROUPS:
        assert scores[category] <= 65.0, (category, scores[category])
    assert scores["balanced"] <= 65.0 and scores["proactive"] <= 65.0


def test_surface_probe_is_strong_where_words_do_decide():
    """The probe is not too weak to notice a surface cue: with a planted keyword it is near 100."""
    from bsft_jax.data.schema import Record, Turn

    def rec(i, flag):
        word = "urgent" if flag else "routine"
        return Record(f"x{i}", f"x{i}", "Error Correction", "proactive",
                      (Turn("Chart", f"note {i % 7} says {word} review {i % 5}"),), "proactive",
                      "dose_error" if flag else NO_INTERVENTION)

    train = [rec(i, i % 2 == 0) for i in range(200)]
    test = [rec(i, i % 2 == 0) for i in range(200, 260)]
    assert audit.probe_scores(train, test)["Error Correction"] > 95


# ----------------------------------------------------------------------------- the token is a decision
def test_item_token_is_a_decision_not_a_category(splits):
    test, train = splits["test"], splits["train"]
    for r in train + test:
        want = "answer" if r.is_multiple_choice else ("intervene" if r.label != NO_INTERVENTION else "hold")
        assert r.behavior == want
    entropy = audit.token_entropy_by_category(test)
    for category in FLAG_GROUPS:
        assert entropy[category] > 0.5, (category, entropy[category])
        tokens = Counter(r.behavior for r in test if r.category == category)
        assert max(tokens.values()) / sum(tokens.values()) <= 0.7, (category, tokens)  # category tells little
    # The last turn (a lookup table from train) predicts the token no better than the majority rate.
    flag_train = [r for r in train if r.category in FLAG_GROUPS]
    flag_test = [r for r in test if r.category in FLAG_GROUPS]
    by_last: dict[str, Counter] = {}
    for r in flag_train:
        by_last.setdefault(r.turns[-1].text, Counter())[r.behavior] += 1
    majority_token, majority = Counter(r.behavior for r in flag_train).most_common(1)[0]
    lookup = [by_last.get(r.turns[-1].text, Counter({majority_token: 1})).most_common(1)[0][0] for r in flag_test]
    rate = sum(p == r.behavior for p, r in zip(lookup, flag_test)) / len(flag_test)
    base = sum(r.behavior == majority_token for r in flag_test) / len(flag_test)
    assert rate <= base + 0.03, (rate, base)
    # Under the group scheme the token is a function of the category (what v1 had): zero entropy.
    group = demo.generate_split("test", 260, spec=BehaviorSpec())
    assert max(audit.token_entropy_by_category(group).values()) == 0.0


def test_item_scheme_spec_and_config_validation():
    spec = BehaviorSpec.item_scheme()
    assert spec.tokens == ("<|behavior:answer|>", "<|behavior:intervene|>", "<|behavior:hold|>")
    assert spec.behavior_for_item("Error Correction", "none", False) == "hold"
    assert spec.behavior_for_item("Error Correction", "dose_error", False) == "intervene"
    assert spec.behavior_for_item("Image Reasoning", "B", True) == "answer"
    assert BehaviorSpec().behavior_for_item("Error Correction", "none", False) == "proactive"
    c = default_config()
    c.behavior.update(names=("answer", "intervene", "hold"), scheme="item")
    assert BehaviorSettings.from_block(c.behavior).spec == spec
    from bsft_jax.data.schema import record_from_dict

    obj = {"category": "Error Correction", "turns": [{"speaker": "Chart", "text": "x"}], "label": "none"}
    assert record_from_dict(obj, spec=spec).behavior == "hold"  # a record without behavior gets its decision
    assert record_from_dict({**obj, "label": "dose_error"}, spec=spec).behavior == "intervene"
    assert record_from_dict(obj).behavior == "proactive"
    with pytest.raises(ValueError, match="needs names"):
        BehaviorSpec(scheme="item")
    with pytest.raises(ValueError, match="scheme"):
        BehaviorSpec(scheme="per-item")
    c = default_config()
    c.run_dir, c.data.source, c.model.source, c.tokenizer.path = "/tmp/unused", "demo", "scratch", "demo"
    c.behavior.scheme = "item"
    with pytest.raises(ConfigError, match="behavior.names"):
        validate_config(c, num_devices=1)
    c.behavior.scheme = "items"
    with pytest.raises(ConfigError, match="behavior.scheme"):
        validate_config(c, num_devices=1)


# ----------------------------------------------------------------------------- copies, balance
def test_no_test_scene_copies_a_train_scene(splits):
    train = splits["train"]
    for split in ("validation", "test"):
        rates = audit.copy_rates(train, splits[split])
        print(f"{split}: exact copies {rates['exact']:.3f}, near copies (numbers replaced) {rates['near']:.3f}")
        assert rates["exact"] == 0.0
        assert rates["near"] < 0.5  # v1: 57% exact copies
    # the held-out combination decides the split, and each split holds its own combinations only
    assert {demo.split_of("Error Correction", ("x", i)) for i in range(200)} == {"train", "validation", "test"}


def test_label_balance_is_reported_and_both_decisions_common(splits):
    counts = demo.label_counts(splits["test"])
    for category in FLAG_GROUPS:
        labels = counts[category]
        print(category, dict(labels))
        hold = labels[NO_INTERVENTION] / sum(labels.values())
        assert 0.25 <= hold <= 0.7, (category, labels)
    hard = [r for r in splits["test"] if r.hard]
    assert 0.05 < len(hard) / len(splits["test"]) < 0.5


def test_generation_does_not_depend_on_the_string_hash_seed():
    # Every process gets its own PYTHONHASHSEED; a scene's split once hashed a frozenset's repr, so the
    # DDX test scenes changed from one process to the next. Two seeds must give the same records.
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import hashlib\nfrom bsft_jax.data.demo import generate_split\n"
            "rs = generate_split('test', 130)\n"
            "print(hashlib.sha1(repr([(r.id, r.turns, r.label, r.options) for r in rs]).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300,
                              cwd=root, env=dict(os.environ, PYTHONPATH=root, PYTHONHASHSEED=seed)).stdout
               for seed in ("1", "2")}
    assert len(digests) == 1, digests
