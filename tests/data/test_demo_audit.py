"""The demo audit's committed numbers (bench/demo_audit.json) are what the audit computes from the
current demo data, and docs/data.md's demo-benchmark section quotes that file: a change of the data
without re-running ``python -m bsft_jax.data.audit --json bench/demo_audit.json`` fails here."""

import json
import os
import re

import pytest

from bsft_jax.behavior import BehaviorSpec, taxonomy
from bsft_jax.data import audit, demo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AUDIT_JSON = os.path.join(ROOT, "bench", "demo_audit.json")


@pytest.fixture(scope="module")
def committed():
    with open(AUDIT_JSON) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def section():
    with open(os.path.join(ROOT, "docs", "data.md")) as f:
        page = f.read()
    start = page.index("## The demo benchmark")
    end = page.find("\n## ", start + 1)  # the next section, or the end of the page
    return page[start:end if end >= 0 else None]


def test_committed_audit_equals_what_the_audit_computes_now(committed):
    pytest.importorskip("sklearn")
    now = audit.audit_numbers(demo.generate_demo(demo.DemoConfig(), spec=BehaviorSpec.item_scheme()))
    assert committed["demo_version"] == demo.DEMO_VERSION
    assert json.loads(json.dumps(now)) == committed  # rerun: python -m bsft_jax.data.audit --json bench/demo_audit.json


def _row(section: str, name: str) -> list[str]:
    line = next(x for x in section.splitlines() if x.startswith(f"| {name} |") or x.startswith(f"| **{name}** |"))
    return [c.strip().strip("*") for c in line.strip("|").split("|")[1:]]


def test_readme_demo_numbers_are_the_committed_audit(committed, section):
    probe, flipped, seen = (committed[k] for k in ("probe_test", "probe_test_flipped", "probe_random_split_of_train"))
    char, char_flipped = committed["char_probe_test"], committed["char_probe_test_flipped"]
    flag = taxonomy.categories_in("balanced") + taxonomy.categories_in("proactive")
    for key in [*flag, "balanced", "proactive"]:
        _, test_cell, char_cell, seen_cell = _row(section, key)
        assert test_cell == f"{probe[key]} ({flipped[key]})", (key, test_cell)
        assert char_cell == f"{char[key]} ({char_flipped[key]})", (key, char_cell)
        assert seen_cell == f"{seen[key]}", (key, seen_cell)
    overall = _row(section, "overall (all 13 categories, full label)")
    assert overall[1:3] == [f"{probe['overall']}", f"{char['overall']}"], overall
    balance = section[section.index("Label balance (test split)"):]
    for category in taxonomy.CATEGORY_NAMES:
        labels, bits, hard = _row(balance, category)
        want = ", ".join(f"{k} {v}" for k, v in committed["test_label_counts"][category].items())
        assert labels == want and bits == f"{committed['test_token_entropy_bits'][category]:.2f}", category
        assert hard == "/".join(str(committed["hard_items"][s][category]) for s in ("train", "validation", "test"))
    text = " ".join(section.split())
    copies = committed["copies_percent"]
    assert f"with numbers replaced too, {copies['near']}% of test scenes" in text
    assert copies["exact"] == 0.0 and "No test scene equals a train scene once names are replaced (0 of" in text
    hr = committed["probe_accuracy_hard_vs_rest"]
    assert f"accuracy is {hr['hard']} on them and {hr['rest']} on the rest" in text
    n_hard = sum(committed["hard_items"]["test"].values())
    assert re.search(rf"\b{n_hard} of the 1,040 test items", text), n_hard
