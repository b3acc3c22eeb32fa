"""Tables the demo scenes (v2) are drawn from. Demo material, not medical advice.

In v2 no string of these tables decides a label by itself. The deciding fact is always a relation
between two things printed in the same scene: a value and the limit on the scene's card, the
proposed drug's class and the charted allergy's class, a checklist card and the team's plan, the
card's order lines and the order. So limits, ranges, targets and thresholds are drawn per scene from
a plausible window (``grid``, :func:`reference_grid`) around the published value (labs and units
differ between hospitals; the scene's own card is what counts), order-set lines draw their doses and
routes per scene (:class:`OrderSet`), and every drug, value and order appears under every label of
its category.
"""

from __future__ import annotations

import dataclasses


def grid(start: float, step: float, n: int, decimals: int) -> tuple[str, ...]:
    """``n`` evenly spaced numbers as printed strings: grid(3.0, 0.5, 3, 1) == ('3.0', '3.5', '4.0')."""
    return tuple(f"{start + i * step:.{decimals}f}" for i in range(n))


# ----------------------------------------------------------------------------- labs
@dataclasses.dataclass(frozen=True)
class Lab:
    """A lab test: values inside the reference range, grids near its critical limits, the reference step."""

    name: str
    unit: str
    reference: tuple[str, str]      # typical reference range (lo, hi)
    normal: tuple[str, ...]         # values well inside the reference range
    near_low: tuple[str, ...] = ()  # ascending grid around the low critical limit (empty: none)
    near_high: tuple[str, ...] = ()  # ascending grid around the high critical limit
    ref_step: float = 0.1           # printed step of the grids around the reference limits


LABS: tuple[Lab, ...] = (
    Lab("potassium", "mmol/L", ("3.5", "5.0"), ("3.8", "4.1", "4.4", "4.7"),
        grid(1.8, 0.1, 16, 1), grid(5.6, 0.1, 16, 1), 0.1),
    Lab("sodium", "mmol/L", ("135", "145"), ("137", "139", "141", "143"), grid(110, 1, 16, 0), grid(154, 1, 16, 0),
        1),
    Lab("glucose", "mg/dL", ("70", "140"), ("88", "96", "104", "121"), grid(30, 2, 16, 0), grid(340, 10, 16, 0), 2),
    Lab("hemoglobin", "g/dL", ("12.0", "17.5"), ("12.9", "13.7", "14.6", "15.4"), grid(5.0, 0.2, 16, 1), (), 0.2),
    Lab("platelets", "x10^3/uL", ("150", "400"), ("190", "236", "281", "327"), grid(6, 2, 16, 0), (), 5),
    Lab("INR", "", ("0.8", "1.2"), ("0.9", "1.0", "1.1"), (), grid(4.0, 0.2, 16, 1), 0.05),
    Lab("calcium", "mg/dL", ("8.5", "10.5"), ("8.9", "9.4", "9.9"), grid(5.2, 0.2, 16, 1), grid(12.2, 0.2, 16, 1), 0.1),
    Lab("lactate", "mmol/L", ("0.5", "2.0"), ("0.9", "1.3", "1.7"), (), grid(3.0, 0.2, 16, 1), 0.05),
)


def reference_grid(lab: Lab, high: bool, n: int = 12) -> tuple[str, ...]:
    """An ascending grid of ``n`` values around the lab's low or high reference limit (per-scene limits).

    Printed with as many decimals as the step needs, so a value and a limit read alike.
    """
    edge = float(lab.reference[1 if high else 0])
    decimals = len(f"{lab.ref_step:g}".split(".")[1]) if "." in f"{lab.ref_step:g}" else 0
    return grid(edge - (n // 2) * lab.ref_step, lab.ref_step, n, decimals)


def lab_text(lab: Lab, value: str) -> str:
    """'potassium 6.6 mmol/L' (INR has no unit)."""
    return f"{lab.name} {value} {lab.unit}".rstrip()


# ----------------------------------------------------------------------------- patient targets (restraint)
@dataclasses.dataclass(frozen=True)
class Target:
    """A measurement the care team has set a patient-specific limit for (it looks alarming elsewhere)."""

    measure: str          # "oxygen saturation"
    unit: str             # " percent", " mg/dL", ""
    why: str              # the context that justifies an unusual target
    upper: bool           # True: act when the value is ABOVE the limit; False: when BELOW it
    values: tuple[str, ...]  # ascending grid; both limit and value are drawn from it


TARGETS: tuple[Target, ...] = (
    Target("oxygen saturation", " percent", "COPD with chronic CO2 retention", False, grid(80, 1, 16, 0)),
    Target("creatinine", " mg/dL", "chronic kidney disease stage 4", True, grid(2.4, 0.2, 16, 1)),
    Target("INR", "", "a mechanical mitral valve on warfarin", True, grid(2.8, 0.2, 16, 1)),
    Target("glucose", " mg/dL", "type 2 diabetes, just after lunch", True, grid(160, 10, 16, 0)),
    Target("temperature", " C", "the first day after knee surgery", True, grid(37.4, 0.1, 16, 1)),
    Target("systolic blood pressure", " mmHg", "an acute stroke before thrombolysis", True, grid(160, 5, 16, 0)),
    Target("heart rate", " per minute", "a beta-blocker started yesterday", False, grid(36, 2, 16, 0)),
)


# ----------------------------------------------------------------------------- drugs
# Drug classes and members (real class membership). Allergies are charted as a class.
DRUG_CLASSES: dict[str, tuple[str, ...]] = {
    "penicillins": ("amoxicillin", "ampicillin", "piperacillin-tazobactam"),
    "cephalosporins": ("ceftriaxone", "cefazolin", "cephalexin"),
    "sulfonamides": ("trimethoprim-sulfamethoxazole", "sulfadiazine"),
    "NSAIDs": ("ibuprofen", "naproxen", "ketorolac"),
    "macrolides": ("clarithromycin", "azithromycin", "erythromycin"),
    "fluoroquinolones": ("ciprofloxacin", "levofloxacin", "moxifloxacin"),
}
CLASS_OF: dict[str, str] = {d: c for c, ds in DRUG_CLASSES.items() for d in ds}
PROPOSED_DRUGS: tuple[str, ...] = tuple(CLASS_OF)
HOME_MEDS: tuple[str, ...] = ("warfarin", "apixaban", "sertraline", "lisinopril", "simvastatin", "methotrexate",
                              "lithium", "digoxin")

# Medicines that share a class, for orders that name a class ("hold the anticoagulant").
ACTIVE_CLASSES: dict[str, tuple[str, ...]] = {
    "anticoagulant": ("heparin infusion", "enoxaparin", "apixaban", "warfarin"),
    "opioid": ("morphine", "hydromorphone", "oxycodone", "fentanyl patch"),
    "insulin": ("insulin glargine", "insulin lispro", "regular insulin"),
    "vasopressor": ("norepinephrine drip", "vasopressin drip", "phenylephrine drip"),
    "diuretic": ("furosemide", "spironolactone", "hydrochlorothiazide"),
    "sedative": ("propofol drip", "midazolam", "dexmedetomidine drip"),
}
ORDER_VERBS: tuple[str, ...] = ("hold the", "restart the", "cut back the", "give the next dose of the")


@dataclasses.dataclass(frozen=True)
class OrderSet:
    """A drug's two situations and the doses and routes a scene's order-set card draws their lines from.

    Each scene draws the two lines (dose, route) afresh, sharing the route or the dose, so no dose or
    route belongs to a situation: the card in the scene decides which line is the patient's.
    """

    situations: tuple[str, str]
    doses: tuple[str, ...]
    routes: tuple[str, ...]


ORDER_SETS: dict[str, OrderSet] = {
    "epinephrine": OrderSet(("anaphylaxis", "cardiac arrest"), ("0.3 mg", "0.5 mg", "1 mg"),
                            ("IM", "IV push", "subcutaneous")),
    "metoprolol": OrderSet(("rapid atrial fibrillation", "stable angina"), ("5 mg", "25 mg", "50 mg"),
                           ("IV", "by mouth", "IV over 10 minutes")),
    "furosemide": OrderSet(("acute pulmonary edema", "ankle swelling"), ("20 mg", "40 mg", "80 mg"),
                           ("IV", "by mouth", "IV over 30 minutes")),
    "ondansetron": OrderSet(("vomiting and nil by mouth", "mild nausea"), ("4 mg", "8 mg", "2 mg"),
                            ("IV", "by mouth", "under the tongue")),
    "potassium chloride": OrderSet(("potassium 2.9 on telemetry", "potassium 3.3 and eating"),
                                   ("10 mEq", "20 mEq", "40 mEq"), ("IV over one hour", "by mouth", "IV over 4 hours")),
    "acetaminophen": OrderSet(("fever and nil by mouth", "fever and eating"), ("1 g", "650 mg", "500 mg"),
                              ("IV over 15 minutes", "by mouth", "rectally")),
    "haloperidol": OrderSet(("severe agitation", "night-time delirium"), ("5 mg", "0.5 mg", "2 mg"),
                            ("IM", "by mouth", "IV")),
    "lorazepam": OrderSet(("status epilepticus", "anxiety before MRI"), ("4 mg", "1 mg", "2 mg"),
                          ("IV", "by mouth", "IM")),
    "hydralazine": OrderSet(("severe hypertension in pregnancy", "heart failure"), ("10 mg", "25 mg", "5 mg"),
                            ("IV", "by mouth", "IM")),
}


# ----------------------------------------------------------------------------- guidelines and checklists
# Each condition has five candidate steps; a scene's checklist card lists three of them.
PROTOCOL_STEPS: dict[str, tuple[str, ...]] = {
    "suspected STEMI": ("get a 12-lead ECG", "give aspirin 325 mg chewed", "activate the cath lab",
                        "page cardiology", "get a chest X-ray"),
    "septic shock": ("draw blood cultures", "measure lactate", "start broad-spectrum antibiotics",
                     "give 30 mL/kg crystalloid", "place a urinary catheter"),
    "suspected acute stroke": ("get a non-contrast head CT", "check a fingerstick glucose",
                               "confirm the last-known-well time", "request a swallow screen", "call neurology"),
    "diabetic ketoacidosis": ("start IV fluids", "check potassium", "start an insulin infusion",
                              "check a urinalysis", "repeat a venous gas"),
    "anaphylaxis": ("give IM epinephrine", "assess the airway", "give IV fluids", "give an antihistamine",
                    "observe for six hours"),
    "upper GI bleeding": ("place two large-bore IVs", "start an IV proton pump inhibitor", "arrange endoscopy",
                          "send blood for crossmatch", "hold the anticoagulant"),
    "hyperkalemia": ("give IV calcium gluconate", "give insulin with glucose", "recheck potassium",
                     "repeat the ECG", "give a potassium binder"),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """A guideline card with a threshold: ``card`` and ``fact`` are templates with {t} and {v}."""

    condition: str
    card: str
    fact: str
    plan: str
    deviation_above: bool    # True: the plan deviates when the value is above the threshold
    values: tuple[str, ...]  # ascending grid for both threshold and value


RULES: tuple[Rule, ...] = (
    Rule("acute ischemic stroke", "IV alteplase only within {t} hours of symptom onset",
         "symptoms began {v} hours ago", "give IV alteplase now", True, grid(2.5, 0.25, 16, 2)),
    Rule("diabetic ketoacidosis", "start insulin only once potassium is at least {t} mmol/L",
         "potassium is {v} mmol/L", "start the insulin infusion now", False, grid(2.6, 0.1, 16, 1)),
    Rule("suspected STEMI", "primary PCI only if the cath lab is free within {t} minutes",
         "the cath lab is free in {v} minutes", "wait for primary PCI", True, grid(45, 5, 16, 0)),
    Rule("community-acquired pneumonia", "home treatment only if oxygen saturation is at least {t} percent",
         "oxygen saturation is {v} percent", "treat at home with oral antibiotics", False, grid(84, 1, 16, 0)),
    Rule("anemia without bleeding", "transfuse only if hemoglobin is below {t} g/dL",
         "hemoglobin is {v} g/dL", "transfuse one unit now", True, grid(6.0, 0.2, 16, 1)),
    Rule("atrial fibrillation", "cardiovert without anticoagulation only within {t} hours of onset",
         "the palpitations began {v} hours ago", "cardiovert today without anticoagulation", True,
         grid(12, 3, 16, 0)),
)


@dataclasses.dataclass(frozen=True)
class Prerequisite:
    """Something that must be confirmed before an action, and how a chart states it."""

    need: str    # "kidney function"
    known: str   # "creatinine 0.9 this morning"


PREREQUISITES: tuple[Prerequisite, ...] = (
    Prerequisite("kidney function", "creatinine 0.9 this morning"),
    Prerequisite("pregnancy status", "pregnancy test negative today"),
    Prerequisite("implanted devices", "no pacemaker or metal implant"),
    Prerequisite("last-known-well time", "last seen well 90 minutes ago"),
    Prerequisite("platelet count", "platelets 240 this morning"),
    Prerequisite("potassium", "potassium 4.2 at 6 am"),
    Prerequisite("INR", "INR 1.1 this morning"),
    Prerequisite("fasting status", "nil by mouth since midnight"),
)
# A scene's chart lists three of these (one not yet checked), so the action's other need is on the
# chart in about 2/7 of scenes (the ``hard`` ones).
ACTIONS: dict[str, tuple[str, ...]] = {  # action -> the needs a checklist card may name for it
    "a CT with IV contrast": ("kidney function", "pregnancy status"),
    "an MRI of the spine": ("implanted devices", "kidney function"),
    "IV alteplase": ("last-known-well time", "platelet count"),
    "a heparin infusion": ("platelet count", "kidney function"),
    "methotrexate": ("pregnancy status", "kidney function"),
    "an insulin infusion": ("potassium", "kidney function"),
    "a lumbar puncture": ("platelet count", "implanted devices"),
    "a liver biopsy": ("INR", "platelet count"),
    "an endoscopy under sedation": ("fasting status", "INR"),
    "a general anesthetic": ("fasting status", "pregnancy status"),
}
OTHER_FACTS: tuple[str, ...] = ("blood pressure 132/80", "heart rate 84", "temperature 37.1",
                                "oxygen saturation 97 percent", "pain 2 out of 10")
