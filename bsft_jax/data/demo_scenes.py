"""One scene generator per BehaviorBench category (demo v2): the label is a relation inside the scene.

Every generator is ``gen(rng, patient, force_label=None) -> Scene``. It makes ALL its random draws
first, in the same order whatever the label, and only then assembles the text. So with the same
``rng`` state, two calls that force different labels give "twin" scenes that differ in one fact (a
value and its limit swapped, the step the plan misses, the class on the alert card ...).

What decides each flag label (always two things printed in the scene, never one string):
  Critical Value Flagging   a lab value against the critical limit printed beside it
  Intervention Restraint    a reported value against the patient's own target in the chart
  Medication Safety Check   the proposed drug's class against the charted allergy class, or the
                            pharmacy alert card of the home medicine
  Ambiguity Clarification   the class an order names against how many active medicines share it
  Omission Detection        the checklist card against the team's plan
  Error Correction          the order against the order-set line of the patient's situation
  Consistency Check         two parts of the record (site, weight, allergy)
  Missing Information       the checklist card's prerequisite against the facts in the chart
  Guideline Deviation       the fact against the threshold on the guideline card
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
    crossing,
    frame,
    join,
    near_pair,
    random_patient,
    voices,
)
from bsft_jax.data.schema import NO_INTERVENTION

PLANS = ("discharge this afternoon", "move to the ward", "start physiotherapy today", "step down the monitoring")
BODY_PARTS = ("knee", "hip", "shoulder", "wrist", "ankle")


def _flag(label: str, text: str) -> str:
    return f"Flag: {label}\n{text}" if label != NO_INTERVENTION else f"No concerns\n{text}"


# ----------------------------------------------------------------------------- balanced
def critical_value_flagging(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    labs = rng.sample([lab for lab in cf.LABS if lab.near_low or lab.near_high], 4)
    slot, other = labs[0], labs[1]
    sides = {lab.name: rng.choice([s for s, g in ((False, lab.near_low), (True, lab.near_high)) if g])
             for lab in labs}
    pairs = {lab.name: near_pair(rng, lab.near_high if sides[lab.name] else lab.near_low) for lab in labs}
    normal = {lab.name: rng.choice(lab.normal) for lab in labs}
    with_distractor = rng.random() < 0.5
    order = rng.sample(range(4), 4)
    plan, v = rng.choice(PLANS), voices(rng)
    label = binary(u, "critical_value", force_label)
    shown = []
    for lab in labs:
        _, lo, hi = pairs[lab.name]
        value, limit = crossing(lo, hi, label == "critical_value" and lab is slot, sides[lab.name])
        if lab is not slot and not (lab is other and with_distractor):
            value = normal[lab.name]
        word = "above" if sides[lab.name] else "below"
        shown.append(f"{cf.lab_text(lab, value)} (critical {word} {limit})")
    text = "Labs: " + "; ".join(shown[i] for i in order) + "."
    turns = frame(pt, v, text, None, f"{pt.name} feels better today, so let's {plan}.")
    slot_text = shown[0]
    if label == "critical_value":
        response = _flag(label, f"{cap(slot_text)}: past its critical limit; repeat and treat before we {plan}.")
    else:
        response = _flag(label, f"Every result is inside its critical limits, {slot_text} included. Fine to {plan}.")
    band = pairs[slot.name][0] // 4
    return Scene(turns, label, response, hard=with_distractor, combo=(slot.name, sides[slot.name], band))


def intervention_restraint(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    t = rng.choice(cf.TARGETS)
    i, lo, hi = near_pair(rng, t.values)
    v = voices(rng)
    label = binary(u, "intervene", force_label, p_flag=0.4)
    value, limit = crossing(lo, hi, label == "intervene", t.upper)
    word = "at most" if t.upper else "at least"
    chart = f"{cap(t.why)}. Team target: {t.measure} {word} {limit}{t.unit}."
    line = f"Just so you know, {t.measure} is {value}{t.unit}, which would be out of range for most patients."
    turns = frame(pt, v, chart, None, line)
    if label == "intervene":
        response = _flag(label, f"{cap(t.measure)} {value}{t.unit} is past this patient's own limit ({word} {limit}); "
                                "this needs action now.")
    else:
        response = _flag(label, f"{cap(t.measure)} {value}{t.unit} is within this patient's target ({word} {limit}); "
                                "no action needed.")
    return Scene(turns, label, response, combo=(t.measure, i // 4))


def medication_safety_check(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    drug = rng.choice(cf.PROPOSED_DRUGS)
    klass = cf.CLASS_OF[drug]
    others = rng.sample([c for c in cf.DRUG_CLASSES if c != klass], 3)
    home = rng.choice(cf.HOME_MEDS)
    two_allergies = rng.random() < 0.5  # hard: the drug is checked against two allergy classes
    v = voices(rng)
    label = choose(u, ("allergy_conflict", "drug_interaction", NO_INTERVENTION), (0.35, 0.35, 0.3), force_label)
    allergy = klass if label == "allergy_conflict" else others[0]
    alert = klass if label == "drug_interaction" else others[1]
    allergies = [allergy, others[2]] if two_allergies else [allergy]
    if two_allergies and rng.random() < 0.5:
        allergies.reverse()
    chart = f"Allergies: {join(allergies)}. Home medicines: {home}."
    card = f"Pharmacy alert for {home}: do not combine with {alert}."
    turns = frame(pt, v, chart, card, f"Let's start {drug}, one of the {klass}.")
    if label == "allergy_conflict":
        response = _flag(label, f"{cap(drug)} is one of the {klass} and the chart lists an allergy to {klass}.")
    elif label == "drug_interaction":
        response = _flag(label, f"The alert card says {home} must not be combined with {klass}, and {drug} is one.")
    else:
        response = _flag(label, f"{cap(drug)} is one of the {klass}: not an allergy ({join(allergies)}) and not on "
                                f"the alert card for {home} ({alert}).")
    return Scene(turns, label, response, hard=two_allergies, combo=(drug, home))


def ambiguity_clarification(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    klass, decoy, third = rng.sample(sorted(cf.ACTIVE_CLASSES), 3)
    first, second = rng.sample(cf.ACTIVE_CLASSES[klass], 2)
    decoy_a, decoy_b = rng.sample(cf.ACTIVE_CLASSES[decoy], 2)
    extra, extra_b = rng.sample(cf.ACTIVE_CLASSES[third], 2)
    verb, order = rng.choice(cf.ORDER_VERBS), rng.sample(range(4), 4)
    v = voices(rng)
    label = binary(u, "clarify", force_label)
    # The order is ambiguous iff two ACTIVE medicines share the class it names. Either way the class
    # is written three times (twice active, or once active and once stopped), so counting words
    # does not tell; the twins swap one active and the stopped medicine.
    clarify = label == "clarify"
    meds = [(first, klass), (second, klass) if clarify else (decoy_b, decoy), (decoy_a, decoy), (extra, third)]
    stopped = (extra_b, third) if clarify else (second, klass)
    chart = ("Active medicines: " + "; ".join(f"{meds[i][0]} ({meds[i][1]})" for i in order)
             + f". Stopped last week: {stopped[0]} ({stopped[1]}).")
    turns = frame(pt, v, chart, None, f"Please {verb} {klass} now.")
    if clarify:
        response = _flag(label, f"Two active medicines are {klass}s ({first} and {second}); which one is meant?")
    else:
        response = _flag(label, f"Only {first} is an active {klass}, so the order is clear.")
    return Scene(turns, label, response, combo=(klass, verb, first))


# ----------------------------------------------------------------------------- proactive
def omission_detection(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    condition = rng.choice(sorted(cf.PROTOCOL_STEPS))
    steps = list(cf.PROTOCOL_STEPS[condition])
    rng.shuffle(steps)
    card, rest = steps[:3], steps[3:]
    miss_card, miss_rest = rng.choice(card), rng.choice(rest)
    order = rng.sample(range(4), 4)
    v = voices(rng)
    label = binary(u, "omission", force_label)
    missed = miss_card if label == "omission" else miss_rest
    plan = [s for s in steps if s != missed]
    plan = [plan[i] for i in order]
    turns = frame(pt, v, f"Admitted with {condition}.", f"Checklist for {condition}: {'; '.join(card)}.",
                  f"Plan: we {join(plan)}.")
    if label == "omission":
        response = _flag(label, f"The plan leaves out a checklist step: {missed}.")
    else:
        response = _flag(label, f"The plan covers every checklist step for {condition}.")
    return Scene(turns, label, response, hard=False, combo=(condition, missed))


def error_correction(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    drug = rng.choice(sorted(cf.ORDER_SETS))
    regimens = list(cf.ORDER_SETS[drug])
    rng.shuffle(regimens)
    mine, other = regimens
    listed = rng.sample(regimens, 2)
    v = voices(rng)
    label = choose(u, ("dose_error", "route_error", NO_INTERVENTION), (0.3, 0.3, 0.4), force_label)
    dose = other.dose if label == "dose_error" else mine.dose
    route = other.route if label == "route_error" else mine.route
    card = f"Order set for {drug}: " + "; ".join(f"{r.situation}: dose {r.dose}, route {r.route}" for r in listed) + "."
    turns = frame(pt, v, f"Current problem: {mine.situation}.", card, f"Give {drug}, dose {dose}, route {route}.")
    if label == "dose_error":
        response = _flag(label, f"For {mine.situation} the order set gives {mine.dose}, not {dose}.")
    elif label == "route_error":
        response = _flag(label, f"For {mine.situation} the order set gives the route {mine.route}, not {route}.")
    else:
        response = _flag(label, f"{cap(drug)} {mine.dose} {mine.route} matches the order set for {mine.situation}.")
    return Scene(turns, label, response, combo=(drug, mine.situation, tuple(r.situation for r in listed)))


def consistency_check(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    kind = rng.choice(("side", "allergy", "weight"))
    part, side = rng.choice(BODY_PARTS), rng.choice(("left", "right"))
    allergen, tolerated = rng.sample(sorted(cf.DRUG_CLASSES), 2)
    weight, small, big = rng.randrange(48, 111), rng.choice((-0.4, -0.2, 0.2, 0.4)), rng.choice((-14, -11, 12, 16))
    v = voices(rng)
    label = binary(u, "inconsistency", force_label)
    bad = label == "inconsistency"
    opposite = "right" if side == "left" else "left"
    if kind == "side":
        consent = opposite if bad else side
        chart = f"Booked for surgery on the {side} {part}; the {opposite} {part} was replaced years ago."
        line, detail = f"The consent form says {consent} {part}.", f"booking {side} {part}, consent {consent} {part}"
    elif kind == "allergy":
        reported = tolerated if bad else allergen
        chart = f"Allergies: {allergen}. Tolerated without problems: {tolerated}."
        line, detail = f"The patient says the hives came from {reported}.", f"chart {allergen}, patient {reported}"
    else:
        measured = f"{weight + (big if bad else small):.1f}"
        chart = f"Weight on admission yesterday: {weight} kg."
        line = f"I weighed the patient this morning: {measured} kg."
        detail = f"{weight} kg yesterday, {measured} kg today"
    turns = frame(pt, v, chart, None, line)
    response = _flag(label, f"The record disagrees ({detail}); confirm before acting." if bad
                     else f"The record agrees ({detail}).")
    combo = {"side": (part, side), "allergy": (allergen, tolerated), "weight": (weight,)}[kind]
    return Scene(turns, label, response, combo=(kind, *combo))


def missing_information(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    action = rng.choice(sorted(cf.ACTIONS))
    need, related = rng.sample(cf.ACTIONS[action], 2)
    by_need = {p.need: p for p in cf.PREREQUISITES}
    # hard: the chart gives the action's OTHER prerequisite, so "something for this action is there"
    # is not enough; the checklist's own item must be matched.
    with_related = rng.random() < 0.5
    pool = [p for p in cf.PREREQUISITES if p.need not in (need, related)]
    spare = [by_need[related] if with_related else rng.choice(pool), rng.choice(pool)]
    if spare[0] is spare[1]:
        spare[1] = next(p for p in pool if p is not spare[0])
    other, order = rng.choice(cf.OTHER_FACTS), rng.sample(range(3), 3)
    v = voices(rng)
    label = binary(u, "missing_info", force_label)
    facts = [spare[0], spare[1] if label == "missing_info" else by_need[need]]
    shown = [f"{p.need}: {p.known}" for p in facts] + [other]
    turns = frame(pt, v, "Notes: " + "; ".join(shown[i] for i in order) + ".",
                  f"Checklist: before {action}, confirm {need}.", f"Let's go ahead with {action} today.")
    if label == "missing_info":
        response = _flag(label, f"Before {action} the checklist needs {need}, and the chart does not give it.")
    else:
        response = _flag(label, f"The chart gives {need} ({by_need[need].known}), as the checklist asks.")
    return Scene(turns, label, response, hard=with_related, combo=(action, need, spare[0].need))


def guideline_deviation(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    r = rng.choice(cf.RULES)
    i, lo, hi = near_pair(rng, r.values)
    v = voices(rng)
    label = binary(u, "deviation", force_label)
    value, threshold = crossing(lo, hi, label == "deviation", r.deviation_above)
    turns = frame(pt, v, f"{cap(r.condition)}; {r.fact.format(v=value)}.",
                  f"Guideline card: {r.card.format(t=threshold)}.", f"Let's {r.plan}.")
    rule = r.card.format(t=threshold)
    response = _flag(label, f"The plan departs from the card ({rule})." if label == "deviation"
                     else f"The plan follows the card ({rule}).")
    return Scene(turns, label, response, combo=(r.condition, i // 3))


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
