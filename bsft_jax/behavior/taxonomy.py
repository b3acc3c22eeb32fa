"""BehaviorBench task taxonomy: 13 categories in three groups along the proactivity spectrum.

Six category names are the paper's (Kim et al., 2025, "BehaviorSFT"); the other seven are ours,
defined to cover the behaviors the paper describes without naming a category for them
(clarifying ambiguity, flagging overlooked critical data, conflicting data, planted errors and
omissions, and scenes where restraint is the right answer). ``source`` says which is which.

Groups:
  reactive   answer the explicit question from the information given;
  balanced   answer, and decide from the scene whether anything warrants speaking up
             (both "intervene" and "hold back" scenes exist);
  proactive  watch the scene unprompted and intervene when something is wrong or missing
             (scenes where nothing is wrong, so restraint is right, exist too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

GROUPS: tuple[str, ...] = ("reactive", "balanced", "proactive")


@dataclasses.dataclass(frozen=True)
class Category:
    """One task category."""

    name: str
    group: str
    source: str  # "paper" or "bsft_jax"
    description: str


CATEGORIES: tuple[Category, ...] = (
    # reactive
    Category("Image Reasoning", "reactive", "paper",
             "Answer a question about a described imaging study or clinical photograph."),
    Category("Differential Diagnosis (DDX) Reasoning", "reactive", "paper",
             "Pick the most likely diagnosis for the presentation among the options."),
    Category("Temporal Ordering", "reactive", "paper",
             "Put the events of the case in the order they happened."),
    Category("Lab Result Interpretation", "reactive", "bsft_jax",
             "Read a lab table and answer what is asked about it."),
    # balanced
    Category("Ambiguity Clarification", "balanced", "bsft_jax",
             "Ask for clarification when an order or statement is ambiguous; proceed when it is clear."),
    Category("Critical Value Flagging", "balanced", "bsft_jax",
             "Flag an overlooked critical value in the data; stay quiet when everything is in range."),
    Category("Medication Safety Check", "balanced", "bsft_jax",
             "Raise a drug-allergy or drug-drug conflict in a plan; hold back when the plan is safe."),
    Category("Intervention Restraint", "balanced", "bsft_jax",
             "Scenes with tempting distractors where speaking up is usually wrong; sometimes it is right."),
    # proactive
    Category("Omission Detection in Group Decision-Makings", "proactive", "paper",
             "Notice a step the team's plan leaves out (a guideline step, a critical test)."),
    Category("Error Correction", "proactive", "paper",
             "Correct a planted factual or dosing error in what a clinician said."),
    Category("Consistency Check", "proactive", "paper",
             "Notice when two parts of the record contradict each other."),
    Category("Missing Information Request", "proactive", "bsft_jax",
             "Ask for a critical fact the team has not got before it acts (pregnancy, renal function)."),
    Category("Guideline Deviation Alert", "proactive", "bsft_jax",
             "Point out that the plan departs from a standard guideline."),
)

CATEGORY_BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}
CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)
PAPER_CATEGORIES: tuple[str, ...] = tuple(c.name for c in CATEGORIES if c.source == "paper")


def group_of(category: str) -> str:
    """The group ("reactive" / "balanced" / "proactive") of a category, or a clear KeyError."""
    try:
        return CATEGORY_BY_NAME[category].group
    except KeyError:
        raise KeyError(f"unknown category {category!r}; expected one of {list(CATEGORY_NAMES)}") from None


def categories_in(group: str) -> tuple[str, ...]:
    """Category names of one group, in table order."""
    if group not in GROUPS:
        raise KeyError(f"unknown group {group!r}; expected one of {GROUPS}")
    return tuple(c.name for c in CATEGORIES if c.group == group)


def in_order(categories: Iterable[str]) -> list[str]:
    """The distinct ``categories`` in taxonomy order, then unknown ones alphabetically (tables, plots)."""
    present = set(categories)
    known = [c for c in CATEGORY_NAMES if c in present]
    return known + sorted(present - set(known))
