"""Demo v2: surface words do not decide the label, a reader of the scene's relations does, the
item-level behavior token is a real decision, and test scenes are not copies of train scenes.

The rule oracle (tests/data/demo_oracle.py) is written from the scene TEXT only (regular expressions
and comparisons); it does not import the generator or the fact tables.
"""


import pytest

from bsft_jax.behavior import BehaviorSpec, taxonomy
from bsft_jax.data import audit, demo
from bsft_jax.data.schema import NO_INTERVENTION
from bsft_jax.setup.config import ConfigError, default_config, validate_config
from bsft_jax.setup.settings import BehaviorSettings

from .demo_oracle import ORACLE

FLAG_GROUPS = taxonomy.categories_in("balanced") + taxonomy.categories_in("proactive")


@pytest.fixture(scope="module")
def splits():
    return demo.generate_demo(demo.DemoConfig(), spec=BehaviorSpec.item_scheme())


# ----------------------------------------------------------------- the rule oracle (tests/data/demo_oracle.py)
def test_rule_oracle_reading_the_scene_scores_100(splits):
    assert set(ORACLE) == set(taxonomy.CATEGORY_NAMES)
    for split in ("train", "validation", "test"):
        for r in splits[split]:
            assert ORACLE[r.category](r) == r.label, (r.category, r.label, r.turns, r.options)


# ----------------------------------------------------------------------------- the surface probe
@pytest.mark.parametrize("probe", sorted(audit.PROBES))
def test_surface_probe_cannot_decide_intervene_vs_hold(splits, probe):
    preds = audit.binary_predictions(splits["train"], splits["test"], probe)
    scores, flipped = audit.pooled_scores(preds), audit.pooled_scores(preds, flip=True)
    print(f"{probe} probe macro-F1 (flipped):", {k: (round(v, 1), round(flipped[k], 1)) for k, v in scores.items()})
    # far below chance is a cue too: turned around it would decide (v2.0.1 Consistency Check: 30.0, flipped 69.5);
    # characters see stems the words split (demo 2.1.0 Missing Information Request: char 71.0, "platelet")
    for key in [*FLAG_GROUPS, "balanced", "proactive"]:
        assert max(scores[key], flipped[key]) <= 65.0, (key, scores[key], flipped[key])


@pytest.mark.parametrize("probe", sorted(audit.PROBES))
def test_surface_probe_is_strong_where_words_do_decide(probe):
    """The probe is not too weak to notice a surface cue: with a planted keyword it is near 100."""
    from bsft_jax.data.schema import Record, Turn

    def rec(i, flag):
        word = "urgent" if flag else "routine"
        return Record(f"x{i}", f"x{i}", "Error Correction", "proactive",
                      (Turn("Chart", f"note {i % 7} says {word} review {i % 5}"),), "proactive",
                      "dose_error" if flag else NO_INTERVENTION)

    train = [rec(i, i % 2 == 0) for i in range(200)]
    test = [rec(i, i % 2 == 0) for i in range(200, 260)]
    assert audit.probe_scores(train, test, probe=probe)["Error Correction"] > 95


# ----------------------------------------------------------------------------- the token is a decision
def test_item_token_is_a_decision_not_a_category(splits):
    test, train = splits["test"], splits["train"]
    for r in train + test:
        want = "answer" if r.is_multiple_choice else ("intervene" if r.label != NO_INTERVENTION else "hold")
        assert r.behavior == want
    entropy = audit.token_entropy_by_category(test)
    for category in FLAG_GROUPS:
        assert entropy[category] > 0.5, (category, entropy[category])
    # The category, the closing line and the clinician's line predict it no better than the majority
    # rate: tests/data/test_demo_shortcuts.py.
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
