"""Reactive (multiple-choice) scene generators of the demo set (v2): the answer is read from the scene.

Each needs a fact that is printed in the scene, not one to recall: the normal ranges on the card
(drawn per scene, values near their limits on both sides), the report's finding for the region asked
about (findings and regions paired at random), the card that links each diagnosis to a feature
(paired at random per scene, so only the card tells), the times on the card's timeline.
"""

from __future__ import annotations

import dataclasses
import random

from bsft_jax.data import clinical_facts as cf
from bsft_jax.data.scene_kit import Patient, Scene, cap, frame, multiple_choice, no_force, place, value_slot, voices

REGIONS = ("right lower lobe", "left upper lobe", "left pleural space", "liver", "right kidney", "spleen",
           "gallbladder", "pancreas")
FINDINGS = ("no abnormality", "a 6 mm nodule", "a simple cyst", "a small calcification", "mild inflammation",
            "a 2 cm mass", "a small fluid collection", "an old scar")
MODALITIES = ("CT of the chest and abdomen", "MRI of the abdomen", "PET-CT", "ultrasound survey")
COMPLAINTS = ("feeling unwell for two days", "poor sleep", "a headache this morning", "nausea")

# Diagnoses and features. A scene's card pairs four diagnoses with four features drawn from all of
# them at random: the pairing is the scene's, so a feature -> diagnosis table learned from train is no help.
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


def _range_text(lab: cf.Lab, lo: str, hi: str) -> str:
    return f"{lab.name} {lo} to {hi}"


def lab_interpretation(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    no_force(force_label)
    labs = rng.sample(cf.LABS, 4)
    target = labs[0]
    # Each lab sits near one limit of a normal range drawn for this scene; only the target is past it.
    # A value string is as often inside as outside its range, so a value -> answer table is no help.
    sides = [rng.random() < 0.5 for _ in labs]
    slots = [value_slot(rng, cf.reference_grid(lab, high)) for lab, high in zip(labs, sides)]
    far = [rng.randrange(-2, 3) for _ in labs]  # the other limit, a few steps off its usual value
    shown, card_order = rng.sample(range(4), 4), rng.sample(range(4), 4)
    options, answer = multiple_choice(rng, target.name, [lab.name for lab in labs[1:]])
    v = voices(rng)
    values, ranges = [], []
    for k, (lab, high) in enumerate(zip(labs, sides)):
        value, limit = place(cf.reference_grid(lab, high), slots[k], k == 0, high)
        other = cf.reference_grid(lab, not high)[len(cf.reference_grid(lab, not high)) // 2 + far[k]]
        values.append(cf.lab_text(lab, value))
        ranges.append(_range_text(lab, *((other, limit) if high else (limit, other))))
    turns = frame(pt, v, "Labs: " + "; ".join(values[i] for i in shown) + ".",
                  "Normal ranges, " + "; ".join(ranges[i] for i in card_order) + ".",
                  "Looking at the labs.", "Which result is outside its normal range?")
    response = f"Answer: {answer}\n{cap(values[0])} is outside {ranges[0]}."
    # held out: the four labs with their sides, the same for every option (holding out the answer's own
    # lab x value would let "the option I never saw as an answer" pick it)
    return Scene(turns, answer, response, options, combo=tuple(sorted(zip([lab.name for lab in labs], sides))))


def image_reasoning(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    no_force(force_label)
    regions = rng.sample(REGIONS, 3)
    findings = rng.sample(FINDINGS, 4)  # three in the report, one only among the options
    modality, asked, complaint = rng.choice(MODALITIES), rng.randrange(3), rng.choice(COMPLAINTS)
    v = voices(rng)
    report = "; ".join(f"{f} in the {r}" for r, f in zip(regions, findings))
    options, answer = multiple_choice(rng, findings[asked], [f for i, f in enumerate(findings) if i != asked])
    turns = frame(pt, v, f"Notes: presents with {complaint}.", f"{cap(modality)} report, {report}.",
                  "The report is back.", f"What does it say about the {regions[asked]}?")
    response = f"Answer: {answer}\nThe report gives {findings[asked]} for the {regions[asked]}."
    return Scene(turns, answer, response, options, hard=False, combo=(*zip(regions, findings), asked))


def ddx_reasoning(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    no_force(force_label)
    dxs = rng.sample(sorted(PRESENTATIONS), 4)
    feats = rng.sample(sorted(f for fs in PRESENTATIONS.values() for f in fs), 4)  # paired with dxs at random
    complaint, card_order = rng.choice(COMPLAINTS), rng.sample(range(4), 4)
    v = voices(rng)
    card = cap("; ".join(f"{feats[i]} suggests {dxs[i]}" for i in card_order)) + "."
    options, answer = multiple_choice(rng, dxs[0], dxs[1:])
    turns = frame(pt, v, f"Notes: presents with {feats[0]} and {complaint}.", card, "New admission.",
                  "Which diagnosis on the card fits best?")
    response = f"Answer: {answer}\n{cap(feats[0])} suggests {dxs[0]} on the card."
    return Scene(turns, answer, response, options, combo=tuple(sorted(dxs)))  # the card's diagnoses, not the answer


def temporal_ordering(rng: random.Random, pt: Patient, force_label: str | None = None) -> Scene:
    no_force(force_label)
    pairs = list(zip(rng.sample(TIMES, 4), rng.sample(EVENTS, 4)))
    ask_first = rng.random() < 0.5
    told = list(pairs)
    rng.shuffle(told)  # narration order is not event order
    target = (min if ask_first else max)(pairs, key=lambda p: p[0].day)
    options, answer = multiple_choice(rng, target[1], [e for _, e in pairs if e != target[1]])
    complaint, v = rng.choice(COMPLAINTS), voices(rng)
    story = " ".join(f"{cap(t.when)}, {e}." for t, e in told)
    turns = frame(pt, v, f"Notes: presents with {complaint}.", story, "Going over the history.",
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
