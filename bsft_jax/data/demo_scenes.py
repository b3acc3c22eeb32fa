"""One scene generator per BehaviorBench category, drawn from :mod:`bsft_jax.data.clinical_facts`.

Every generator is ``gen(rng, patient, force_label=None) -> Scene``. It makes ALL its random
draws first, in the same order whatever the label, and only then assembles the text. So with the
same ``rng`` state, two calls that force different labels give "twin" scenes that differ only in
the planted fact (a critical value, a conflicting drug, a dropped guideline step ...): the label
follows from the scene's content, never from its wording. ``force_label`` exists for that test;
datasets leave it None and the generator samples the label from a uniform drawn first.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

from bsft_jax.data import clinical_facts as cf
from bsft_jax.data.schema import NO_INTERVENTION, Turn

DOCTORS = ("Dr. Kim", "Dr. Patel", "Dr. Okafor", "Dr. Garcia", "Dr. Novak")
NURSES = ("Nurse Lee", "Nurse Brown")
SURNAMES = ("Alvarez", "Brooks", "Chen", "Diaz", "Evans", "Fischer", "Gupta", "Hughes", "Ito", "Jones",
            "Khan", "Lopez", "Moreau", "Nguyen", "Owens", "Park", "Quinn", "Rossi", "Singh", "Walsh")
REASONS = ("pneumonia", "a hip fracture", "heart failure", "cellulitis", "a kidney infection", "a COPD flare")
PLANS = ("discharge this afternoon", "move to the ward", "start physiotherapy today")
BODY_PARTS = ("knee", "hip", "shoulder", "wrist")
WEIGHTS = (56, 64, 72, 81, 90)


class Infeasible(ValueError):
    """A forced label cannot be planted in the drawn scene (e.g. a route error for a drug without one)."""


@dataclasses.dataclass(frozen=True)
class Patient:
    title: str
    surname: str
    age: int
    female: bool

    @property
    def name(self) -> str:
        return f"{self.title} {self.surname}"

    @property
    def obj(self) -> str:  # object pronoun
        return "her" if self.female else "him"


def random_patient(rng: random.Random) -> Patient:
    """A patient for one case (all its scenes share it)."""
    female = rng.random() < 0.5
    return Patient("Ms." if female else "Mr.", rng.choice(SURNAMES), rng.randrange(22, 89), female)


@dataclasses.dataclass(frozen=True)
class Scene:
    turns: tuple[Turn, ...]
    label: str
    response: str
    options: tuple[tuple[str, str], ...] | None = None
    hard: bool = False


def _choose(u: float, labels: Sequence[str], probs: Sequence[float], force: str | None) -> str:
    if force is not None:
        if force not in labels:
            raise Infeasible(f"label {force!r} not possible here; possible: {list(labels)}")
        return force
    acc = 0.0
    for label, p in zip(labels, probs):
        acc += p
        if u < acc:
            return label
    return labels[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _mc(rng: random.Random, correct: str, distractors: Sequence[str]) -> tuple[tuple[tuple[str, str], ...], str]:
    items = [correct, *distractors]
    rng.shuffle(items)
    options = tuple((chr(ord("A") + i), _cap(t)) for i, t in enumerate(items))
    return options, options[items.index(correct)][0]


def _no_force(force: str | None) -> None:
    if force is not None:
        raise Infeasible("multiple-choice scenes draw their answer; force_label is not supported")


# ----------------------------------------------------------------------------- reactive
def lab_interpretation(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    _no_force(force_label)
    ask_critical = rng.random() < 0.5
    labs = rng.sample(cf.LABS, 4)
    target, distractor = labs[0], labs[1]
    values = {lab.name: rng.choice(lab.normal) for lab in labs}
    if ask_critical:  # one critical value next to an abnormal-but-not-critical one
        values[target.name] = rng.choice(target.critical_values)
        values[distractor.name] = rng.choice(distractor.borderline)
        question = "Which result is at a critical level?"
        why = f"is critical ({target.critical})"
    else:
        values[target.name] = rng.choice(target.borderline + target.critical_values)
        question = "Which result is outside its reference range?"
        why = f"is outside the reference range {target.reference}"
    shown = list(labs)
    rng.shuffle(shown)
    options, answer = _mc(rng, target.name, [lab.name for lab in labs[1:]])
    turns = (Turn("Labs", "; ".join(cf.lab_text(lab, values[lab.name]) for lab in shown) + "."),
             Turn(rng.choice(DOCTORS), f"Looking at {pt.name}'s labs. {question}"))
    response = f"Answer: {answer}\n{_cap(cf.lab_text(target, values[target.name]))} {why}."
    return Scene(turns, answer, response, options, hard=ask_critical)


def image_reasoning(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    _no_force(force_label)
    f = rng.choice(cf.IMAGE_FINDINGS)
    same = [x.diagnosis for x in cf.IMAGE_FINDINGS if x.modality == f.modality and x is not f]
    other = [x.diagnosis for x in cf.IMAGE_FINDINGS if x.modality != f.modality]
    near = rng.sample(same, min(3, len(same)))
    options, answer = _mc(rng, f.diagnosis, near + rng.sample(other, 3 - len(near)))
    turns = (Turn("Case", f"{pt.name}, {pt.age}, is seen in the emergency department."),
             Turn("Radiology", f"The {f.modality} shows {f.finding}."),
             Turn(rng.choice(DOCTORS), f"What does the {f.modality} show?"))
    response = f"Answer: {answer}\n{_cap(f.finding)} on a {f.modality} means {f.diagnosis}."
    return Scene(turns, answer, response, options, hard=len(near) == 3)


def ddx_reasoning(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    _no_force(force_label)
    p = rng.choice(cf.PRESENTATIONS)
    feats = rng.sample(p.features, 2)
    options, answer = _mc(rng, p.diagnosis, rng.sample([x.diagnosis for x in cf.PRESENTATIONS if x is not p], 3))
    turns = (Turn("Case", f"{pt.name}, {pt.age}, presents with {feats[0]} and {feats[1]}."),
             Turn(rng.choice(DOCTORS), "What is the most likely diagnosis?"))
    response = f"Answer: {answer}\n{_cap(feats[0])} with {feats[1]} points to {p.diagnosis}."
    return Scene(turns, answer, response, options)


def temporal_ordering(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    _no_force(force_label)
    pairs = list(zip(rng.sample(cf.TIMES, 4), rng.sample(cf.EVENTS, 4)))
    ask_first = rng.random() < 0.5
    told = list(pairs)
    rng.shuffle(told)  # narration order is not event order
    target = (min if ask_first else max)(pairs, key=lambda p: p[0].day)
    options, answer = _mc(rng, target[1], [e for _, e in pairs if e != target[1]])
    story = " ".join(f"{_cap(t.when)}, {e}." for t, e in told)
    turns = (Turn("Case", f"Timeline for {pt.name}: {story}"),
             Turn(rng.choice(DOCTORS), f"Which of these happened {'first' if ask_first else 'last'}?"))
    response = (f"Answer: {answer}\n{_cap(target[1])} {target[0].when}, "
                f"{'before' if ask_first else 'after'} the other events.")
    return Scene(turns, answer, response, options)


# ----------------------------------------------------------------------------- balanced
def ambiguity_clarification(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    k = rng.randrange(len(cf.ORDERS))
    order, reason, doc, nurse = cf.ORDERS[k], rng.choice(REASONS), rng.choice(DOCTORS), rng.choice(NURSES)
    label = _choose(u, ("clarify", NO_INTERVENTION), (0.5, 0.5), force_label)
    text = order.ambiguous if label == "clarify" else order.clear
    turns = (Turn("Case", f"{pt.name}, {pt.age}, admitted with {reason}."),
             Turn(doc, f"{nurse}, please {text}."),
             Turn(nurse, "Will do, preparing it now."),
             Turn(doc, "Assistant, anything before we go ahead?"))
    if label == "clarify":
        response = f"Flag: clarify\nPlease clarify the order before it is given: {order.why}."
    else:
        response = f"No concerns\nThe order is complete: {order.clear}."
    return Scene(turns, label, response, hard=label == "clarify" and k in (1, 2))


def critical_value_flagging(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    labs = rng.sample(cf.LABS, 4)
    slot, other = labs[0], labs[1]
    values = {lab.name: rng.choice(lab.normal) for lab in labs}
    critical = rng.choice(slot.critical_values)
    with_distractor = rng.random() < 0.5
    borderline = rng.choice(other.borderline)
    shown = list(labs)
    rng.shuffle(shown)
    plan, doc_a, doc_b = rng.choice(PLANS), *rng.sample(DOCTORS, 2)
    label = _choose(u, ("critical_value", NO_INTERVENTION), (0.5, 0.5), force_label)
    if label == "critical_value":
        values[slot.name] = critical
    if with_distractor:
        values[other.name] = borderline
    turns = (Turn("Labs", "; ".join(cf.lab_text(lab, values[lab.name]) for lab in shown) + "."),
             Turn(doc_a, f"{pt.name} feels better today, so let's {plan}."),
             Turn(doc_b, "Agreed. Assistant, please file these results."))
    if label == "critical_value":
        response = (f"Flag: critical_value\n{_cap(cf.lab_text(slot, critical))} is critical ({slot.critical}); "
                    f"repeat and treat it before we {plan}.")
    else:
        mild = f"; {cf.lab_text(other, borderline)} is only mildly abnormal" if with_distractor else ""
        response = f"No concerns\nNo result is at a critical level{mild}. Fine to {plan}."
    return Scene(turns, label, response, hard=with_distractor)


def medication_safety_check(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    # The proposed drug is the same whatever the label: the chart (allergy, home medicine) decides.
    u = rng.random()
    drug = rng.choice(cf.PROPOSED_DRUGS)
    conflicting = [a for a in cf.ALLERGIES if drug in a.conflicting]
    allergy_bad = conflicting[0] if conflicting else None
    allergy_ok = rng.choice([a for a in cf.ALLERGIES if drug not in a.conflicting])
    interacting = [i for i in cf.INTERACTIONS if i.new_drug == drug]
    inter = rng.choice(interacting) if interacting else None
    home_ok = rng.choice(cf.COMPATIBLE[drug])
    doc = rng.choice(DOCTORS)
    feasible = {"allergy_conflict": 0.35 if allergy_bad else 0.0, "drug_interaction": 0.35 if inter else 0.0,
                NO_INTERVENTION: 0.3}
    total = sum(feasible.values())
    labels = [k for k, v in feasible.items() if v]
    label = _choose(u, labels, [feasible[k] / total for k in labels], force_label)
    allergy = allergy_bad if label == "allergy_conflict" else allergy_ok
    home = inter.home_med if label == "drug_interaction" else home_ok
    turns = (Turn("Chart", f"{pt.name}, {pt.age}. Allergies: {allergy.name}. Home medicines: {home}."),
             Turn(doc, f"Let's start {drug} for {cf.DRUG_USES[drug]}."),
             Turn("Pharmacist Chen", "I can send that order. Assistant, please check it."))
    if label == "allergy_conflict":
        response = (f"Flag: allergy_conflict\n{_cap(drug)} is {allergy.why} and the chart lists an allergy to "
                    f"{allergy.name}; choose a drug from another class.")
    elif label == "drug_interaction":
        response = f"Flag: drug_interaction\n{_cap(drug)} with {home} {inter.effect}; choose another drug."
    else:
        response = f"No concerns\n{_cap(drug)} is safe with an allergy to {allergy.name} and with {home}."
    return Scene(turns, label, response)


def intervention_restraint(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    e = rng.choice(cf.EXPECTED)
    ok, bad, nurse, doc = rng.choice(e.ok_values), rng.choice(e.bad_values), rng.choice(NURSES), rng.choice(DOCTORS)
    label = _choose(u, ("intervene", NO_INTERVENTION), (0.3, 0.7), force_label)
    finding = e.finding.format(v=bad if label == "intervene" else ok)
    turns = (Turn("Case", f"{pt.name}, {pt.age}: {e.context}."),
             Turn(nurse, f"Just so you know, {finding}."),
             Turn(doc, "Thanks, noted. Let's keep to the plan."))
    if label == "intervene":
        response = f"Flag: intervene\n{_cap(finding)}, which is {e.bad_why}; this needs action now."
    else:
        response = f"No concerns\n{_cap(finding)}, which is {e.ok_why}; no action needed."
    return Scene(turns, label, response, hard=label == NO_INTERVENTION)


# ----------------------------------------------------------------------------- proactive
def omission_detection(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    p = rng.choice(cf.PROTOCOLS)
    steps = list(p.steps)
    rng.shuffle(steps)
    drop = rng.randrange(len(steps))
    with_extra, extra, pos = rng.random() < 0.5, rng.choice(p.extra), rng.random()
    doc_a, doc_b = rng.sample(DOCTORS, 2)
    label = _choose(u, ("omission", NO_INTERVENTION), (0.5, 0.5), force_label)
    shown = [s for i, s in enumerate(steps) if not (label == "omission" and i == drop)]
    if with_extra:
        shown.insert(int(pos * (len(shown) + 1)), extra)
    half = (len(shown) + 1) // 2
    turns = (Turn("Case", f"{pt.name}, {pt.age}, has {p.condition}."),
             Turn(doc_a, f"Let's {_join(shown[:half])}."),
             Turn(doc_b, f"And I will {_join(shown[half:])}."),
             Turn(doc_a, "Good, that's the plan."))
    if label == "omission":
        response = f"Flag: omission\nThe plan for {p.condition} leaves out a core step: {steps[drop]}."
    else:
        response = f"No concerns\nThe plan covers the core steps for {p.condition}."
    return Scene(turns, label, response, hard=label == "omission" and with_extra)


def error_correction(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    d = rng.choice(cf.DOSES)
    doc, nurse = rng.choice(DOCTORS), rng.choice(NURSES)
    if d.wrong_route:
        label = _choose(u, ("dose_error", "route_error", NO_INTERVENTION), (0.3, 0.3, 0.4), force_label)
    else:
        label = _choose(u, ("dose_error", NO_INTERVENTION), (0.5, 0.5), force_label)
    dose = d.wrong_dose if label == "dose_error" else d.dose
    route = d.wrong_route if label == "route_error" else d.route
    turns = (Turn("Case", f"{pt.name}, {pt.age}, has {d.indication}."),
             Turn(doc, f"Give {d.drug} {dose} {route} now."),
             Turn(nurse, "Drawing it up."))
    if label == "dose_error":
        response = f"Flag: dose_error\n{d.wrong_dose} is ten times the usual {d.dose} of {d.drug} for {d.indication}."
    elif label == "route_error":
        response = f"Flag: route_error\n{_cap(d.drug)} for {d.indication} is given {d.route}, never {d.wrong_route}."
    else:
        response = f"No concerns\n{_cap(d.drug)} {d.dose} {d.route} is the standard dose for {d.indication}."
    return Scene(turns, label, response)


def consistency_check(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    kind = rng.choice(("side", "allergy", "weight"))
    part, side = rng.choice(BODY_PARTS), rng.choice(("left", "right"))
    allergen, other_allergen = (a.name for a in rng.sample(cf.ALLERGIES, 2))
    weight, gap = rng.choice(WEIGHTS), rng.choice((-22, 28, 35))
    doc, nurse = rng.choice(DOCTORS), rng.choice(NURSES)
    label = _choose(u, ("inconsistency", NO_INTERVENTION), (0.5, 0.5), force_label)
    bad = label == "inconsistency"
    if kind == "side":
        other = ("right" if side == "left" else "left") if bad else side
        turns = (Turn("Case", f"{pt.name}, {pt.age}, is booked for surgery on the {side} {part}."),
                 Turn(nurse, f"The consent form says {other} {part}."),
                 Turn(doc, "Fine, mark the site, we start at noon."))
        detail = f"the case says the {side} {part} and the consent says the {other} {part}"
    elif kind == "allergy":
        reported = other_allergen if bad else allergen
        turns = (Turn("Chart", f"{pt.name}, {pt.age}. Allergies: {allergen}."),
                 Turn("Patient", f"I once got hives from {reported}."),
                 Turn(doc, "Good, let's continue the admission."))
        detail = f"the chart lists an allergy to {allergen} and the patient reports a reaction to {reported}"
    else:
        measured = weight + gap if bad else weight
        turns = (Turn("Chart", f"{pt.name}, {pt.age}. Weight {weight} kg."),
                 Turn(nurse, f"I weighed {pt.obj} this morning: {measured} kg."),
                 Turn(doc, "Then dose the enoxaparin by weight."))
        detail = f"the chart weight is {weight} kg and the measured weight is {measured} kg"
    if bad:
        response = f"Flag: inconsistency\nThe record disagrees: {detail}. Confirm before acting."
    else:
        response = f"No concerns\nThe record agrees: {detail}."
    return Scene(turns, label, response)


def missing_information(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    allowed = [p for p in cf.PREREQUISITES if not p.female_only or (pt.female and pt.age <= 45)]
    p = rng.choice(allowed)
    facts, pos = rng.sample(cf.OTHER_FACTS, 2), rng.random()
    doc, nurse = rng.choice(DOCTORS), rng.choice(NURSES)
    label = _choose(u, ("missing_info", NO_INTERVENTION), (0.5, 0.5), force_label)
    if label == NO_INTERVENTION:
        facts.insert(int(pos * 3), p.known)
    turns = (Turn("Case", f"{pt.name}, {pt.age}: {'; '.join(facts)}."),
             Turn(doc, f"Let's go ahead with {p.action} today."),
             Turn(nurse, "I'll book it."))
    if label == "missing_info":
        response = f"Flag: missing_info\nBefore {p.action} we need {p.needs}, and the record does not give it."
    else:
        response = f"No concerns\n{_cap(p.known)}, so {p.needs} is known before {p.action}."
    return Scene(turns, label, response)


def guideline_deviation(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    u = rng.random()
    d = rng.choice(cf.DEVIATIONS)
    ok, bad = rng.choice(d.ok_values), rng.choice(d.bad_values)
    doc_a, doc_b = rng.sample(DOCTORS, 2)
    label = _choose(u, ("deviation", NO_INTERVENTION), (0.5, 0.5), force_label)
    fact = d.fact.format(v=bad if label == "deviation" else ok)
    turns = (Turn("Case", f"{pt.name}, {pt.age}, has {d.condition}; {fact}."),
             Turn(doc_a, f"Let's {d.plan}."),
             Turn(doc_b, "Agreed."))
    if label == "deviation":
        response = f"Flag: deviation\nThe plan departs from the guideline: {d.rule}."
    else:
        response = f"No concerns\nThe plan follows the guideline: {d.rule}."
    return Scene(turns, label, response)


Generator = Callable[..., Scene]

GENERATORS: dict[str, Generator] = {
    "Image Reasoning": image_reasoning,
    "Differential Diagnosis (DDX) Reasoning": ddx_reasoning,
    "Temporal Ordering": temporal_ordering,
    "Lab Result Interpretation": lab_interpretation,
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
MC_KEYS: tuple[str, ...] = ("A", "B", "C", "D")
