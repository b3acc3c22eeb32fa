"""Pieces every demo scene generator shares: people, the Scene type, closing turns, relation helpers.

Scene templates, speakers and closing turns are shared by all 13 categories and both labels, so that
no phrase names the category or the label (demo v2). Every scene has the same four turns: the chart
("Chart", sections headed by one of :data:`CHART_HEADERS`), a card ("Reference": limits, ranges,
checklists, regimens, reports), a clinician from one pool, and a closing line drawn from
:data:`CLOSINGS` whatever the scene.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from bsft_jax.data.schema import NO_INTERVENTION, Turn

DOCTORS = ("Dr. Kim", "Dr. Patel", "Dr. Okafor", "Dr. Garcia", "Dr. Novak")
NURSES = ("Nurse Lee", "Nurse Brown", "Nurse Adeyemi")
SURNAMES = ("Alvarez", "Brooks", "Chen", "Diaz", "Evans", "Fischer", "Gupta", "Hughes", "Ito", "Jones",
            "Khan", "Lopez", "Moreau", "Nguyen", "Owens", "Park", "Quinn", "Rossi", "Singh", "Walsh")
CLOSINGS = ("Assistant, anything to add?", "Let's go ahead then.", "Sounds good to me.",
            "Any thoughts before we move on?", "Okay, next patient after this.", "Noted, thanks.",
            "Assistant, you have the chart too.", "Right, let's keep moving.")
MC_KEYS: tuple[str, ...] = ("A", "B", "C", "D")
# The only section headers a chart uses; each is shared by two or more categories.
CHART_HEADERS: tuple[str, ...] = ("Labs", "Notes", "Allergies", "Medicines")


class Infeasible(ValueError):
    """A forced label cannot be planted in the drawn scene (e.g. a route error for a drug without one)."""


@dataclasses.dataclass(frozen=True)
class Patient:
    """One case's patient (all its scenes share it)."""

    title: str
    surname: str
    age: int
    female: bool

    @property
    def name(self) -> str:
        return f"{self.title} {self.surname}"


def random_patient(rng: random.Random) -> Patient:
    """A patient for one case (all its scenes share it)."""
    female = rng.random() < 0.5
    return Patient("Ms." if female else "Mr.", rng.choice(SURNAMES), rng.randrange(22, 89), female)


@dataclasses.dataclass(frozen=True)
class Scene:
    """A generated scene. ``combo`` is the held-out combination that decides its split bucket."""

    turns: tuple[Turn, ...]
    label: str
    response: str
    options: tuple[tuple[str, str], ...] | None = None
    hard: bool = False
    combo: tuple = ()


@dataclasses.dataclass(frozen=True)
class Voices:
    """The people of one scene, drawn once: two clinicians (``a`` speaks, ``b`` closes) and a closing line."""

    a: str
    b: str
    closing: str


def voices(rng: random.Random) -> Voices:
    """Two different clinicians from the shared pool and a closing line from :data:`CLOSINGS`."""
    a, b = rng.sample(DOCTORS + NURSES, 2)
    return Voices(a, b, rng.choice(CLOSINGS))


def frame(pt: Patient, v: Voices, chart: str, card: str, line: str, question: str | None = None
          ) -> tuple[Turn, ...]:
    """The one scene template: chart, reference card, a clinician's line (and question), closing line."""
    return (Turn("Chart", f"{pt.name}, {pt.age}. {chart}"), Turn("Reference", card),
            Turn(v.a, line if question is None else f"{line} {question}"), Turn(v.b, v.closing))


def choose(u: float, labels: Sequence[str], probs: Sequence[float], force: str | None) -> str:
    """The label for uniform draw ``u`` (or ``force``, if it is one of ``labels``)."""
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


def binary(u: float, flag: str, force: str | None, p_flag: float = 0.5) -> str:
    """``flag`` or ``none``."""
    return choose(u, (flag, NO_INTERVENTION), (p_flag, 1 - p_flag), force)


def value_slot(rng: random.Random, values: Sequence[str]) -> tuple[int, int]:
    """(value index, gap): a value from the inner part of an ascending grid and a limit gap of 1 or 2 steps.

    Drawn before the label; :func:`place` then puts the limit on one side of the value or the other.
    The value's distribution does not depend on the label, so each value string appears under both
    labels at the base rate (limits at the grid's ends are the only strings that lean one way). The
    two gaps are equally likely, which :func:`value_class` needs.
    """
    return rng.randrange(2, len(values) - 2), rng.choice((1, 2))


def value_class(values: Sequence[str], slot: tuple[int, int]) -> tuple[int, int]:
    """The held-out class of a value slot: (half of the grid, value index mod 3).

    A held-out combination takes a string's scenes out of train. Held out by value band (demo 2.1),
    it took the limits just below the band with one label and those just above with the other, so
    in train those limit strings leaned to the label they lack in test (a probe turned around read
    it: Intervention Restraint 66). Within a residue class mod 3, with gaps 1 and 2 equally likely,
    a limit string is as often below a value of the class (value - gap) as above one (value + gap),
    so a class holds each limit string under both labels alike; only strings next to the grid's
    middle and ends lean. A test value is never a train value of its grid.
    """
    return slot[0] * 2 // len(values), slot[0] % 3


def place(values: Sequence[str], slot: tuple[int, int], bad: bool, upper: bool) -> tuple[str, str]:
    """(value, limit): the value is past the limit iff ``bad`` (past = above if ``upper``, else below)."""
    i, gap = slot
    return values[i], values[i - gap if bad == upper else i + gap]


def cap(s: str) -> str:
    """First letter upper case."""
    return s[:1].upper() + s[1:]


def join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def multiple_choice(rng: random.Random, correct: str, distractors: Sequence[str]
                    ) -> tuple[tuple[tuple[str, str], ...], str]:
    """Shuffled options A-D and the correct key."""
    items = [correct, *distractors]
    rng.shuffle(items)
    options = tuple((chr(ord("A") + i), cap(t)) for i, t in enumerate(items))
    return options, options[items.index(correct)][0]


def no_force(force: str | None) -> None:
    """Multiple-choice generators draw their answer; forcing a label is not supported."""
    if force is not None:
        raise Infeasible("multiple-choice scenes draw their answer; force_label is not supported")
