"""Reactive (multiple-choice) scene generators of the demo set (v2): the answer is read from the scene.

Each needs a fact that is printed in the scene, not one to recall: the reference range beside each
value, the imaging report's finding for the region asked about (findings and regions are paired at
random), the teaching card that links each diagnosis to a feature, the times in the timeline.
"""

from __future__ import annotations

import dataclasses
import random

from bsft_jax.data import clinical_facts as cf
from bsft_jax.data.scene_kit import Patient, Scene, cap, frame, multiple_choice, no_force, voices

REGIONS = ("right lower lobe", "left upper lobe", "left pleural space", "liver", "right kidney", "spleen",
           "gallbladder", "pancreas")
FINDINGS = ("no abnormality", "a 6 mm nodule", "a simple cyst", "a small calcification", "mild inflammation",
            "a 2 cm mass", "a small fluid collection", "an old scar")
MODALITIES = ("CT of the chest and abdomen", "MRI of the abdomen", "PET-CT", "ultrasound survey")
COMPLAINTS = ("feeling unwell for two days", "poor sleep", "a headache this morning", "nausea")

# Diagnoses and features that point to them (a scene's teaching card shows one feature per diagnosis).
PRESENTATIONS: dict[str, tuple[str, ...]] = {
    "acute myocardial infarction": ("crushing chest pain spreading to the left arm", "ST elevation in II, III, aVF"),
    "aortic dissection": ("tearing pain going through to the back", "a 30 mmHg arm pressure difference"),
    "pulmonary embolism": ("a swollen calf after a long flight", "sudden pleuritic pain with low saturation"),
    "acute pericarditis": ("pain that eases when leaning forward", "a pericardial friction rub"),
    "acute appendicitis": ("pain that moved from the navel to the right lower quadrant", "rebound tenderness"),
    "acute cholecystitis": ("right upper quadrant pain after a fatty meal", "a positive Murphy sign"),
    "acute pancreatitis": ("epigastric pain going to the back", "lipase four times the upper limit"),
    "bacterial meningitis": ("neck stiffness with fever", "pain when looking at light"),
    "diabetic ketoacidosis": ("deep rapid breathing", "glucose of 520 with urine ketones"),
    "ischemic stroke": ("sudden weakness of one arm and the face", "slurred speech with a normal glucose"),
}


@dataclasses.dataclass(frozen=True)
class TimedEvent:
    day: int       # days relative to admission (0 = admission day)
    when: str


TIMES: tuple[TimedEvent, ...] = (
    TimedEvent(-7, "a week before admission"), TimedEvent(-3, "three days before admission"),
    TimedEvent(-1, "the day before admission"), TimedEvent(0, "on admission"),
    TimedEvent(2, "on hospital day 2"), TimedEvent(5, "on hospital day 5"),
)
EVENTS: tuple[str, ...] = (
    "a fever began", "a dry cough started", "ibuprofen was taken", "the chest X-ray showed an infiltrate",
    "antibiotics were started", "a rash appeared", "blood cultures grew Staphylococcus aureus",
    "the creatinine rose", "confusion began", "the patient moved to the ICU",
)


def lab_interpretation(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    no_force(force_label)
    labs = rng.sample(cf.LABS, 4)
    target = labs[0]
    high = rng.random() < 0.5
    lo, hi = target.reference
    step = float(hi) - float(lo)
    decimals = len(lo.split(".")[1]) if "." in lo else 0
    unit = 10.0 ** -decimals
    off = max(1, round(rng.choice((0.05, 0.1, 0.15, 0.25)) * step / unit)) * unit  # >= one printed digit
    value = f"{float(hi) + off:.{decimals}f}" if high else f"{max(float(lo) - off, unit):.{decimals}f}"
    values = {lab.name: rng.choice(lab.normal) for lab in labs}
    values[target.name] = value
    shown = rng.sample(labs, 4)
    options, answer = multiple_choice(rng, target.name, [lab.name for lab in labs[1:]])
    v = voices(rng)
    text = "Labs: " + "; ".join(f"{cf.lab_text(lab, values[lab.name])} (reference {lab.reference[0]}-"
                                f"{lab.reference[1]})" for lab in shown) + "."
    turns = frame(pt, v, text, None, "Looking at the labs.", "Which result is outside its reference range?")
    response = f"Answer: {answer}\n{cap(cf.lab_text(target, value))} is outside {lo}-{hi}."
    return Scene(turns, answer, response, options, combo=(target.name, value))


def image_reasoning(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    no_force(force_label)
    regions = rng.sample(REGIONS, 3)
    findings = rng.sample(FINDINGS, 4)  # three in the report, one only among the options
    modality, asked = rng.choice(MODALITIES), rng.randrange(3)
    v = voices(rng)
    report = "; ".join(f"{r}: {f}" for r, f in zip(regions, findings))
    options, answer = multiple_choice(rng, findings[asked], [f for i, f in enumerate(findings) if i != asked])
    turns = frame(pt, v, f"{cap(modality)} report: {report}.", None, "The report is back.",
                  f"What does it say about the {regions[asked]}?")
    response = f"Answer: {answer}\nThe report gives {findings[asked]} for the {regions[asked]}."
    return Scene(turns, answer, response, options, hard=False, combo=(*zip(regions, findings), asked))


def ddx_reasoning(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    no_force(force_label)
    dxs = rng.sample(sorted(PRESENTATIONS), 4)
    feats = [rng.choice(PRESENTATIONS[d]) for d in dxs]
    complaint, card_order = rng.choice(COMPLAINTS), rng.sample(range(4), 4)
    v = voices(rng)
    card = "Teaching card: " + "; ".join(f"{feats[i]} suggests {dxs[i]}" for i in card_order) + "."
    options, answer = multiple_choice(rng, dxs[0], dxs[1:])
    turns = frame(pt, v, f"Presents with {feats[0]} and {complaint}.", card, "New admission.",
                  "Which diagnosis on the card fits best?")
    response = f"Answer: {answer}\n{cap(feats[0])} suggests {dxs[0]} on the card."
    return Scene(turns, answer, response, options, combo=(dxs[0], feats[0], tuple(sorted(dxs))))


def temporal_ordering(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    no_force(force_label)
    pairs = list(zip(rng.sample(TIMES, 4), rng.sample(EVENTS, 4)))
    ask_first = rng.random() < 0.5
    told = list(pairs)
    rng.shuffle(told)  # narration order is not event order
    target = (min if ask_first else max)(pairs, key=lambda p: p[0].day)
    options, answer = multiple_choice(rng, target[1], [e for _, e in pairs if e != target[1]])
    v = voices(rng)
    story = " ".join(f"{cap(t.when)}, {e}." for t, e in told)
    turns = frame(pt, v, f"Timeline: {story}", None, "Going over the history.",
                  f"Which of these happened {'first' if ask_first else 'last'}?")
    response = (f"Answer: {answer}\n{cap(target[1])} {target[0].when}, "
                f"{'before' if ask_first else 'after'} the other events.")
    return Scene(turns, answer, response, options, combo=(*told, ask_first))


REACTIVE_GENERATORS = {
    "Image Reasoning": image_reasoning,
    "Differential Diagnosis (DDX) Reasoning": ddx_reasoning,
    "Temporal Ordering": temporal_ordering,
    "Lab Result Interpretation": lab_interpretation,
}
