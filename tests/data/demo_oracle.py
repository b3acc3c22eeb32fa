"""An independent rule oracle for the demo scenes: it reads the relations from the scene TEXT only.

Regular expressions and comparisons, written for the tests; it does not import the generator or the
fact tables, so a generator that printed a scene whose label does not follow from its text fails it.
Every scene has four turns: Chart, Reference (the card), a clinician's line (and question), closing.
"""

import re
from collections import Counter

from bsft_jax.data.schema import NO_INTERVENTION

NUM = r"(\d+(?:\.\d+)?)"
CHART, CARD, LINE = 0, 1, 2


def text(r, index: int) -> str:
    return r.turns[index].text


def _past(value: str, word: str, limit: str) -> bool:
    return float(value) > float(limit) if word == "above" else float(value) < float(limit)


def _critical(r):
    values = dict(re.findall(r"(\w+) " + NUM, text(r, CHART).split("Labs: ", 1)[1]))
    limits = re.findall(r"act if (\w+) is (above|below) " + NUM, text(r, CARD), re.I)
    assert len(values) == 4 and len(limits) == 4, r.turns
    past = any(_past(values[name], word, limit) for name, word, limit in limits)
    return "critical_value" if past else NO_INTERVENTION


def _restraint(r):
    limits = re.findall(r"act if (.+?) is (above|below) " + NUM, text(r, CARD))
    line = text(r, LINE)
    past = any(_past(re.search(re.escape(m) + " is " + NUM, line).group(1), w, t) for m, w, t in limits)
    return "intervene" if past else NO_INTERVENTION


def _medication(r):
    allergies = set(re.split(r", | and ", re.search(r"Allergies: (.+?)\. Medicines", text(r, CHART)).group(1)))
    alert = re.search(r"with (.+?)\.$", text(r, CARD)).group(1)
    klass = re.search(r"one of the (.+?)\.$", text(r, LINE)).group(1)
    if klass in allergies:
        return "allergy_conflict"
    return "drug_interaction" if klass == alert else NO_INTERVENTION


def _ambiguity(r):
    meds = re.search(r"Medicines: (.+)\.$", text(r, CHART)).group(1).split("; ")
    active = [m for m in meds if not m.endswith("(stopped last week)")]
    class_of = dict(re.findall(r"([^;]+?) \((\w+)\)(?:; |\.$)", text(r, CARD).lower()))
    klass = re.search(r"(\w+) now\.$", text(r, LINE)).group(1)
    count = Counter(class_of[m.lower()] for m in active)
    return "clarify" if count[klass] >= 2 else NO_INTERVENTION


def _omission(r):
    steps = re.search(r"^For .+?, (.+)\.$", text(r, CARD)).group(1).split("; ")
    plan = text(r, LINE)
    return "omission" if any(s not in plan for s in steps) else NO_INTERVENTION


def order_lines(card: str) -> list[tuple[str, str, str, str]]:
    """(drug, situation, dose, route) of each line of an order card."""
    return [tuple(x.strip().lower() for x in m) for m in
            re.findall(r"([\w ]+?) for ([^,]+), dose ([^,]+), route ([^;]+?)(?:;|\.$)", card)]


def _error(r):
    problem = re.search(r"treating (.+)\.$", text(r, CHART)).group(1).lower()
    drug, dose, route = re.search(r"Give (.+?), dose ([^,]+), route (.+)\.$", text(r, LINE)).groups()
    want = [(d, rt) for dr, s, d, rt in order_lines(text(r, CARD)) if dr == drug.lower() and s == problem]
    assert len(want) == 1, r.turns
    if dose.lower() != want[0][0]:
        return "dose_error"
    return "route_error" if route.lower() != want[0][1] else NO_INTERVENTION


def _consistency(r):
    chart, card, line = text(r, CHART), text(r, CARD), text(r, LINE)
    if "Booked for surgery" in card:
        bad = re.search(r"on the (left|right) ", card).group(1) != re.search(r"says (left|right) ", line).group(1)
    elif "Allergies" in chart:
        allergies = set(re.split(r", | and ", re.search(r"Allergies: (.+?)\.$", chart).group(1)))
        bad = re.search(r"came from (.+?)\.$", line).group(1) not in allergies
    else:
        before = float(re.search(r"yesterday " + NUM + " kg", chart).group(1))
        limit = float(re.search(r"more than " + NUM + " kg", card).group(1))
        bad = abs(float(re.search(NUM + r" kg", line).group(1)) - before) > limit
    return "inconsistency" if bad else NO_INTERVENTION


def _missing(r):
    need = re.search(r"confirm (.+)\.$", text(r, CARD)).group(1)
    notes = re.search(r"Notes: (.+)\.$", text(r, CHART)).group(1).split("; ")
    given = {n.split(", ")[0] for n in notes if ", " in n and not n.endswith(", not yet checked")}
    assert sum(n.endswith(", not yet checked") for n in notes) == 1, notes
    return NO_INTERVENTION if need in given else "missing_info"


def _unit(s: str) -> str:
    return re.search(NUM + r" ([\w/]+)", s).group(2)


def _guideline(r):
    fact = text(r, CHART).split("; ", 1)[1]
    value, unit = float(re.search(NUM, fact).group(1)), _unit(fact)
    rules = [c for c in text(r, CARD).rstrip(".").split("; ") if _unit(c) == unit]
    assert len(rules) == 1, r.turns
    threshold = float(re.search(NUM, rules[0]).group(1))
    if "at least" in rules[0]:
        ok = value >= threshold
    elif "below" in rules[0]:
        ok = value < threshold
    else:  # "within"
        ok = value <= threshold
    return NO_INTERVENTION if ok else "deviation"


_DAYS = {"a week before admission": -7, "three days before admission": -3, "the day before admission": -1,
         "on admission": 0, "on hospital day 2": 2, "on hospital day 5": 5}


def _option(r, answer: str) -> str:
    return next(k for k, v in r.options if v.lower() == answer.lower())


def _lab(r):
    values = re.findall(r"(\w+) " + NUM, text(r, CHART).split("Labs: ", 1)[1])
    ranges = {n: (float(lo), float(hi)) for n, lo, hi in re.findall(r"(\w+) " + NUM + " to " + NUM, text(r, CARD))}
    outside = [n for n, v in values if not ranges[n][0] <= float(v) <= ranges[n][1]]
    assert len(outside) == 1, r.turns
    return _option(r, outside[0])


def _image(r):
    region = re.search(r"about the (.+)\?$", text(r, LINE)).group(1)
    report = {reg: f for f, reg in re.findall(r"(?:, |; )(.+?) in the (.+?)(?=;|\.$)", text(r, CARD))}
    return _option(r, report[region])


def _ddx(r):
    presents = text(r, CHART)
    pairs = [c.split(" suggests ") for c in text(r, CARD).rstrip(".").split("; ")]
    dx = [d for feat, d in pairs if feat.lower() in presents.lower()]
    assert len(dx) == 1, (presents, pairs)
    return _option(r, dx[0])


def _temporal(r):
    story = text(r, CARD)
    events = {e: _DAYS[w.lower()] for w, e in re.findall(r"(" + "|".join(_DAYS) + r"), ([^.]+)\.", story, re.I)}
    pick = min if "first" in text(r, LINE) else max
    return _option(r, pick(events, key=events.get))


ORACLE = {
    "Critical Value Flagging": _critical, "Intervention Restraint": _restraint,
    "Medication Safety Check": _medication, "Ambiguity Clarification": _ambiguity,
    "Omission Detection in Group Decision-Makings": _omission, "Error Correction": _error,
    "Consistency Check": _consistency, "Missing Information Request": _missing,
    "Guideline Deviation Alert": _guideline, "Lab Result Interpretation": _lab, "Image Reasoning": _image,
    "Differential Diagnosis (DDX) Reasoning": _ddx, "Temporal Ordering": _temporal,
}
