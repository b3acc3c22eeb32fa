"""One scene generator per BehaviorBench category (demo v2): the label is a relation inside the scene.

Every generator is ``gen(rng, patient, force_label=None) -> Scene``. It makes ALL its random draws
first, in the same order whatever the label, and only then assembles the text. So with the same
``rng`` state, two calls that force different labels give "twin" scenes that differ in one fact (a
value and its limit swapped, the step the plan misses, the class on the alert card ...).

What decides each flag label (always two things printed in the scene, never one string; every
scene is chart, card, clinician, closing line, see :func:`bsft_jax.data.scene_kit.frame`):
  Critical Value Flagging   a lab value in the chart against its limit on the card
  Intervention Restraint    a reported value against the patient's own target on the card
  Medication Safety Check   the proposed drug's class against the charted allergy classes, or the
                            card for the home medicine
  Ambiguity Clarification   the class an order names against how many active medicines the card
                            puts in that class
  Omission Detection        the checklist card against the team's plan
  Error Correction          the order against the card's line for the patient's problem (lines
                            drawn per scene; an error copies the other line whole)
  Consistency Check         two parts of the record (site, weight, allergy)
  Missing Information       the card's prerequisite against the facts in the chart
  Guideline Deviation       the fact against the threshold on the guideline card
Each category also has ``hard`` scenes (share :data:`P_HARD`) with a second relation to check.
Labels are planned per category by :mod:`bsft_jax.data.demo` (``force_label``), so intervene rates
are equal across categories; the generator's own draw ``u`` is for direct calls.
Reactive (multiple-choice) generators live in :mod:`bsft_jax.data.demo_reactive`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from bsft_jax.data import clinical_facts as cf
from bsft_jax.data.demo_reactive import REACTIVE_GENERATORS
from bsft_jax.data.scene_kit import (  # noqa: F401  (re-exported for callers of v1)
    MC_KEYS,
    Infeasible,
    Patient,
    Scene,
    binary,
    cap,
    choose,
    frame,
    join,
    place,
    random_patient,
    value_class,
    value_slot,
    voices,
)
from bsft_jax.data.schema import NO_INTERVENTION

PLANS = ("discharge this afternoon", "move to the ward", "start physiotherapy today", "step down the monitoring")
BODY_PARTS = ("knee", "hip", "shoulder", "wrist", "ankle", "elbow", "hand", "foot", "big toe", "thumb")
UNCHECKED = "not yet checked"  # how the chart shows a prerequisite without a result (Missing Information)
P_HARD = 0.3  # share of flag scenes drawn with a second relation to check (the ``hard`` subset)


def _flag(label: str, text: str) -> str:
    return f"Flag: {label}\n{text}" if label != NO_INTERVENTION else f"No concerns\n{text}"


def _act_if(measure: str, limit: str, unit: str, upper: bool) -> str:
    return f"act if {measure} is {'above' if upper else 'below'} {limit}{unit}"


# ----------------------------------------------------------------------------- balanced
def critical_value_flagging(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    labs = rng.sample([lab for lab in cf.LABS if lab.near_low or lab.near_high], 4)
    slot, other = labs[0], labs[1]
    sides = {lab.name: rng.choice([s for s, g in ((False, lab.near_low), (True, lab.near_high)) if g])
             for lab in labs}
    grids = {lab.name: lab.near_high if sides[lab.name] else lab.near_low for lab in labs}
    slots = {lab.name: value_slot(rng, grids[lab.name]) for lab in labs}
    normal = {lab.name: rng.choice(lab.normal) for lab in labs}
    with_distractor = rng.random() < P_HARD  # hard: a second lab sits near (not past) its limit
    order, card_order = rng.sample(range(4), 4), rng.sample(range(4), 4)
    plan, v = rng.choice(PLANS), voices(rng)
    label = binary(u, "critical_value", force_label)
    values, limits = [], []
    for lab in labs:
        value, limit = place(grids[lab.name], slots[lab.name], label == "critical_value" and lab is slot,
                             sides[lab.name])
        if lab is not slot and not (lab is other and with_distractor):
            value = normal[lab.name]
        values.append(cf.lab_text(lab, value))
        limits.append(_act_if(lab.name, limit, "", sides[lab.name]))
    chart = "Labs: " + "; ".join(values[i] for i in order) + "."
    card = cap("; ".join(limits[i] for i in card_order)) + "."
    turns = frame(pt, v, chart, card, f"{pt.name} feels better today, so let's {plan}.")
    if label == "critical_value":
        response = _flag(label, f"{cap(values[0])} is past its limit ({limits[0]}); repeat and treat before we {plan}.")
    else:
        response = _flag(label, f"Every result is inside its limits, {values[0]} included. Fine to {plan}.")
    return Scene(turns, label, response, hard=with_distractor,
                 combo=(slot.name, sides[slot.name], *value_class(grids[slot.name], slots[slot.name])))


def intervention_restraint(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    t, t2 = rng.sample(cf.TARGETS, 2)
    slot, slot2 = value_slot(rng, t.values), value_slot(rng, t2.values)
    two = rng.random() < P_HARD  # hard: a second measure with its own target is reported too (within it)
    swap, v = rng.random() < 0.5, voices(rng)
    label = binary(u, "intervene", force_label)
    value, limit = place(t.values, slot, label == "intervene", t.upper)
    value2, limit2 = place(t2.values, slot2, False, t2.upper)
    targets = [(t, value, limit), (t2, value2, limit2)] if two else [(t, value, limit)]
    shown = targets[::-1] if swap else targets
    chart = "Notes: " + "; ".join(x[0].why for x in shown) + "."
    card = "For this patient, " + "; ".join(_act_if(x[0].measure, x[2], x[0].unit, x[0].upper) for x in shown) + "."
    line = ("Just so you know, " + " and ".join(f"{x[0].measure} is {x[1]}{x[0].unit}" for x in shown)
            + ", which would be out of range for most patients.")
    turns = frame(pt, v, chart, card, line)
    rule = _act_if(t.measure, limit, t.unit, t.upper)
    if label == "intervene":
        response = _flag(label, f"{cap(t.measure)} {value}{t.unit} is past this patient's own limit ({rule}); "
                                "this needs action now.")
    else:
        response = _flag(label, f"{cap(t.measure)} {value}{t.unit} is within this patient's target ({rule}); "
                                "no action needed.")
    return Scene(turns, label, response, hard=two, combo=(t.measure, *value_class(t.values, slot)))


def medication_safety_check(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    drug = rng.choice(cf.PROPOSED_DRUGS)
    klass = cf.CLASS_OF[drug]
    others = rng.sample([c for c in cf.DRUG_CLASSES if c != klass], 3)
    home = rng.choice(cf.HOME_MEDS)
    two_allergies = rng.random() < P_HARD  # hard: the drug is checked against two allergy classes
    flip = rng.random() < 0.5
    v = voices(rng)
    label = choose(u, ("allergy_conflict", "drug_interaction", NO_INTERVENTION), (0.25, 0.25, 0.5), force_label)
    allergy = klass if label == "allergy_conflict" else others[0]
    alert = klass if label == "drug_interaction" else others[1]
    allergies = [allergy, others[2]] if two_allergies else [allergy]
    if two_allergies and flip:
        allergies.reverse()
    chart = f"Allergies: {join(allergies)}. Medicines: {home}."
    card = f"Do not combine {home} with {alert}."
    turns = frame(pt, v, chart, card, f"Let's start {drug}, one of the {klass}.")
    if label == "allergy_conflict":
        response = _flag(label, f"{cap(drug)} is one of the {klass} and the chart lists an allergy to {klass}.")
    elif label == "drug_interaction":
        response = _flag(label, f"The card says {home} must not be combined with {klass}, and {drug} is one.")
    else:
        response = _flag(label, f"{cap(drug)} is one of the {klass}: not an allergy ({join(allergies)}) and not on "
                                f"the card for {home} ({alert}).")
    # held out: the drug with the charted allergy classes (drug x allergy class)
    return Scene(turns, label, response, hard=two_allergies, combo=(drug, tuple(sorted(allergies))))


def ambiguity_clarification(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    klass, decoy, third = rng.sample(sorted(cf.ACTIVE_CLASSES), 3)
    first, second = rng.sample(cf.ACTIVE_CLASSES[klass], 2)
    decoy_a, decoy_b = rng.sample(cf.ACTIVE_CLASSES[decoy], 2)
    extra, extra_b = rng.sample(cf.ACTIVE_CLASSES[third], 2)
    five = rng.random() < P_HARD  # hard: a second class also has two active medicines
    verb, order, card_order = rng.choice(cf.ORDER_VERBS), rng.sample(range(5), 5), rng.sample(range(6), 6)
    v = voices(rng)
    label = binary(u, "clarify", force_label)
    # The order is ambiguous iff two ACTIVE medicines share the class it names. Another class always
    # has two active medicines too when the order is clear, so "some class is doubled" does not tell;
    # the twins swap one active and the stopped medicine.
    clarify = label == "clarify"
    if five:
        meds = [(first, klass), (decoy_a, decoy), (decoy_b, decoy), (extra, third),
                (second, klass) if clarify else (extra_b, third)]
    else:
        meds = [(first, klass), (second, klass) if clarify else (decoy_b, decoy), (decoy_a, decoy), (extra, third)]
    stopped = (extra_b, third) if clarify else (second, klass)
    listed = [*meds, stopped]
    chart = ("Medicines: " + "; ".join(meds[i][0] for i in order if i < len(meds))
             + f"; {stopped[0]} (stopped last week).")
    card = cap("; ".join(f"{listed[i][0]} ({listed[i][1]})" for i in card_order if i < len(listed))) + "."
    turns = frame(pt, v, chart, card, f"Please {verb} {klass} now.")
    if clarify:
        response = _flag(label, f"Two active medicines are {klass}s ({first} and {second}); which one is meant?")
    else:
        response = _flag(label, f"Only {first} is an active {klass}, so the order is clear.")
    return Scene(turns, label, response, hard=five, combo=(klass, verb, first))


# ----------------------------------------------------------------------------- proactive
def omission_detection(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    condition = rng.choice(sorted(cf.PROTOCOL_STEPS))
    steps = list(cf.PROTOCOL_STEPS[condition])
    rng.shuffle(steps)
    long_card = rng.random() < P_HARD  # hard: the card lists four steps, so only one step is off the card
    card, rest = (steps[:4], steps[4:]) if long_card else (steps[:3], steps[3:])
    miss_card, miss_rest = rng.choice(card), rng.choice(rest)
    order = rng.sample(range(4), 4)
    v = voices(rng)
    label = binary(u, "omission", force_label)
    missed = miss_card if label == "omission" else miss_rest
    plan = [s for s in steps if s != missed]
    plan = [plan[i] for i in order]
    turns = frame(pt, v, f"Notes: admitted with {condition}.", f"For {condition}, {'; '.join(card)}.",
                  f"Let's {join(plan)}.")
    if label == "omission":
        response = _flag(label, f"The plan leaves out a step on the card: {missed}.")
    else:
        response = _flag(label, f"The plan covers every step on the card for {condition}.")
    return Scene(turns, label, response, hard=long_card, combo=(condition, missed))


def _order_line(drug: str, situation: str, dose: str, route: str) -> str:
    return f"{drug} for {situation}, dose {dose}, route {route}"


def error_correction(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    drug, drug2 = rng.sample(sorted(cf.ORDER_SETS), 2)
    spec, spec2 = cf.ORDER_SETS[drug], cf.ORDER_SETS[drug2]
    mine, other = rng.sample(spec.situations, 2)
    doses, routes = rng.sample(spec.doses, 2), rng.sample(spec.routes, 2)
    by_dose = rng.random() < 0.5  # the two lines of the card differ in dose (same route) or in route
    with_other_drug = rng.random() < P_HARD  # hard: the card also has another drug's line
    line2 = _order_line(drug2, rng.choice(spec2.situations), rng.choice(spec2.doses), rng.choice(spec2.routes))
    card_order = rng.sample(range(3), 3)
    v = voices(rng)
    label = binary(u, "dose_error" if by_dose else "route_error", force_label)
    regimen = {mine: (doses[0], routes[0]), other: (doses[1], routes[0]) if by_dose else (doses[0], routes[1])}
    # An error order copies the OTHER situation's whole line, so every order line is on the card and
    # appears under both decisions: only the patient's problem tells which line applies.
    dose, route = regimen[other if label != NO_INTERVENTION else mine]
    lines = [_order_line(drug, s, *regimen[s]) for s in (mine, other)] + ([line2] if with_other_drug else [])
    card = cap("; ".join(lines[i] for i in card_order if i < len(lines))) + "."
    turns = frame(pt, v, f"Notes: treating {mine}.", card, f"Give {drug}, dose {dose}, route {route}.")
    want_dose, want_route = regimen[mine]
    if label == "dose_error":
        response = _flag(label, f"For {mine} the card gives {want_dose}, not {dose}.")
    elif label == "route_error":
        response = _flag(label, f"For {mine} the card gives the route {want_route}, not {route}.")
    else:
        response = _flag(label, f"{cap(drug)} {want_dose} {want_route} matches the card for {mine}.")
    return Scene(turns, label, response, hard=with_other_drug, combo=(drug, mine, dose, route))


def consistency_check(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    kind = rng.choice(("side", "allergy", "weight"))
    part, side = rng.choice(BODY_PARTS), rng.choice(("left", "right"))
    allergen, tolerated, second = rng.sample(sorted(cf.DRUG_CLASSES), 3)
    two = kind == "allergy" and rng.random() < 2 * P_HARD  # hard: two allergy classes to match against
    weight = rng.randrange(480, 1200) / 10
    small, big = rng.randrange(1, 31) / 10, rng.randrange(80, 161) / 10
    sign = rng.choice((-1, 1))
    v = voices(rng)
    label = binary(u, "inconsistency", force_label)
    bad = label == "inconsistency"
    opposite = "right" if side == "left" else "left"
    if kind == "side":
        consent = opposite if bad else side
        chart = f"Notes: the {opposite} {part} was operated on years ago."
        card = f"Booked for surgery on the {side} {part}."
        line, detail = f"The consent form says {consent} {part}.", f"booking {side} {part}, consent {consent} {part}"
    elif kind == "allergy":
        reported = tolerated if bad else allergen
        allergies = sorted((allergen, second)) if two else [allergen]
        chart, card = f"Allergies: {join(allergies)}.", f"{cap(tolerated)} tolerated without problems."
        line = f"The patient says the hives came from {reported}."
        detail = f"chart {join(allergies)}, patient {reported}"
    else:
        measured = f"{weight + sign * (big if bad else small):.1f}"
        chart = f"Notes: weight on admission yesterday {weight:.1f} kg."
        card = "Recheck the weight when it changes by more than 5 kg in a day."
        line = f"I weighed the patient this morning, {measured} kg."
        detail = f"{weight:.1f} kg yesterday, {measured} kg today"
    turns = frame(pt, v, chart, card, line)
    response = _flag(label, f"The record disagrees ({detail}); confirm before acting." if bad
                     else f"The record agrees ({detail}).")
    # held out: the body part (both sides), the unordered pair of classes, the weight band; so a
    # test scene never meets the mirror image of a train scene, whose words would carry the other label
    combo = {"side": (part,), "allergy": tuple(sorted((allergen, tolerated))), "weight": (int(weight) // 5,)}[kind]
    return Scene(turns, label, response, hard=two, combo=(kind, *combo))


def missing_information(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    # The chart lists three prerequisites, one of them not yet checked; the card asks for one of the
    # three, drawn whatever the label. The label only decides WHICH item is unchecked: the card's
    # (missing) or one of the other two (hold back). So, given the chart's items (the held-out
    # combination), each prerequisite is on the card, given or unchecked equally often under both
    # labels, and no string leans to either. (Demo 2.1 named a third prerequisite on the card only
    # when it was missing, so every prerequisite's name leaned to a flag: a char-probe 71.)
    items = rng.sample(cf.PREREQUISITES, 3)
    need = rng.choice(items)
    action = rng.choice([a for a in sorted(cf.ACTIONS) if need.need in cf.ACTIONS[a]])
    unchecked_other = rng.choice([p for p in items if p is not need])
    other, at = rng.choice(cf.OTHER_FACTS), rng.randrange(4)
    v = voices(rng)
    label = binary(u, "missing_info", force_label)
    unchecked = need if label == "missing_info" else unchecked_other
    shown = [f"{p.need}, {UNCHECKED if p is unchecked else p.known}" for p in items]
    shown.insert(at, other)
    # hard: the chart also lists the action's OTHER prerequisite, so "something for this action is
    # there (or unchecked)" is not enough; the card's own item must be matched.
    hard = any(p.need in cf.ACTIONS[action] for p in items if p is not need)
    turns = frame(pt, v, "Notes: " + "; ".join(shown) + ".",
                  f"Before {action}, confirm {need.need}.", f"Let's go ahead with {action} today.")
    if label == "missing_info":
        response = _flag(label, f"Before {action} the card needs {need.need}, and the chart has it {UNCHECKED}.")
    else:
        response = _flag(label, f"The chart gives {need.need} ({need.known}), as the card asks.")
    # held out: the chart's prerequisites in their order and the other note (not the card's item,
    # which would tie a combination to one label)
    return Scene(turns, label, response, hard=hard, combo=(tuple(p.need for p in items), other))


def guideline_deviation(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    r = rng.choice(cf.RULES)
    slot = value_slot(rng, r.values)
    unit = r.fact.split("{v} ")[1].split()[0]
    r2 = rng.choice([x for x in cf.RULES if x.fact.split("{v} ")[1].split()[0] != unit])
    t2 = r2.values[rng.randrange(len(r2.values))]
    two_rules, first = rng.random() < P_HARD, rng.random() < 0.5  # hard: the card has a second rule
    v = voices(rng)
    label = binary(u, "deviation", force_label)
    value, threshold = place(r.values, slot, label == "deviation", r.deviation_above)
    rule = r.card.format(t=threshold)
    rules = [rule, r2.card.format(t=t2)] if two_rules else [rule]
    card = cap("; ".join(rules if first else rules[::-1])) + "."
    turns = frame(pt, v, f"Notes: {r.condition}; {r.fact.format(v=value)}.", card, f"Let's {r.plan}.")
    response = _flag(label, f"The plan departs from the card ({rule})." if label == "deviation"
                     else f"The plan follows the card ({rule}).")
    return Scene(turns, label, response, hard=two_rules, combo=(r.condition, *value_class(r.values, slot)))


Generator = Callable[..., Scene]

GENERATORS: dict[str, Generator] = {
    **REACTIVE_GENERATORS,
    "Ambiguity Clarification": ambiguity_clarification,
    "Critical Value Flagging": critical_value_flagging,
    "Medication Safety Check": medication_safety_check,
    "Intervention Restraint": intervention_restraint,
    "Omission Detection in Group Decision-Makings": omission_detection,
    "Error Correction": error_correction,
    "Consistency Check": consistency_check,
    "Missing Information Request": missing_information,
    "Guideline Deviation Alert": guideline_deviation,
}

# Labels of the flag (non multiple-choice) categories; multiple-choice ones use option letters A-D.
FLAG_LABELS: dict[str, tuple[str, ...]] = {
    "Ambiguity Clarification": ("clarify", NO_INTERVENTION),
    "Critical Value Flagging": ("critical_value", NO_INTERVENTION),
    "Medication Safety Check": ("allergy_conflict", "drug_interaction", NO_INTERVENTION),
    "Intervention Restraint": ("intervene", NO_INTERVENTION),
    "Omission Detection in Group Decision-Makings": ("omission", NO_INTERVENTION),
    "Error Correction": ("dose_error", "route_error", NO_INTERVENTION),
    "Consistency Check": ("inconsistency", NO_INTERVENTION),
    "Missing Information Request": ("missing_info", NO_INTERVENTION),
    "Guideline Deviation Alert": ("deviation", NO_INTERVENTION),
}
