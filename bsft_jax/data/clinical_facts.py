"""Tables the demo scenes (v2) are drawn from. Demo material, not medical advice.

In v2 no string of these tables decides a label by itself. The deciding fact is always a relation
between two things printed in the same scene: a value and the critical limit printed beside it, the
proposed drug's class and the charted allergy's class, a checklist card and the team's plan, an order
set and the order. So limits, targets and thresholds are drawn per scene from a plausible window
(``grid``) around the published value (labs and units differ between hospitals; the scene's own card
is what counts), and every drug, value and order appears under every label of its category.
"""

from __future__ import annotations

import dataclasses


def grid(start: float, step: float, n: int, decimals: int) -> tuple[str, ...]:
    """``n`` evenly spaced numbers as printed strings: grid(3.0, 0.5, 3, 1) == ('3.0', '3.5', '4.0')."""
    return tuple(f"{start + i * step:.{decimals}f}" for i in range(n))


# ----------------------------------------------------------------------------- labs
@dataclasses.dataclass(frozen=True)
class Lab:
    """A lab test: values inside the reference range, and grids near its low / high critical limits."""

    name: str
    unit: str
    reference: tuple[str, str]      # typical reference range (lo, hi)
    normal: tuple[str, ...]         # values well inside the reference range
    near_low: tuple[str, ...] = ()  # ascending grid around the low critical limit (empty: none)
    near_high: tuple[str, ...] = ()  # ascending grid around the high critical limit


LABS: tuple[Lab, ...] = (
    Lab("potassium", "mmol/L", ("3.5", "5.0"), ("3.8", "4.1", "4.4", "4.7"),
        grid(1.8, 0.1, 16, 1), grid(5.6, 0.1, 16, 1)),
    Lab("sodium", "mmol/L", ("135", "145"), ("137", "139", "141", "143"), grid(110, 1, 16, 0), grid(154, 1, 16, 0)),
    Lab("glucose", "mg/dL", ("70", "140"), ("88", "96", "104", "121"), grid(30, 2, 16, 0), grid(340, 10, 16, 0)),
    Lab("hemoglobin", "g/dL", ("12.0", "17.5"), ("12.9", "13.7", "14.6", "15.4"), grid(5.0, 0.2, 16, 1)),
    Lab("platelets", "x10^3/uL", ("150", "400"), ("190", "236", "281", "327"), grid(6, 2, 16, 0)),
    Lab("INR", "", ("0.8", "1.2"), ("0.9", "1.0", "1.1"), (), grid(4.0, 0.2, 16, 1)),
    Lab("calcium", "mg/dL", ("8.5", "10.5"), ("8.9", "9.4", "9.9"), grid(5.2, 0.2, 16, 1), grid(12.2, 0.2, 16, 1)),
    Lab("lactate", "mmol/L", ("0.5", "2.0"), ("0.9", "1.3", "1.7"), (), grid(3.0, 0.2, 16, 1)),
)


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
class Regimen:
    """One line of an order set: for a situation, a dose and a route."""

    situation: str
    dose: str
    route: str


# Each drug has two real regimens with different doses and routes (an order mixing them is an error).
ORDER_SETS: dict[str, tuple[Regimen, Regimen]] = {
    "epinephrine": (Regimen("anaphylaxis", "0.5 mg", "IM"), Regimen("cardiac arrest", "1 mg", "IV push")),
    "metoprolol": (Regimen("rapid atrial fibrillation", "5 mg", "IV"),
                   Regimen("stable angina", "50 mg", "by mouth")),
    "furosemide": (Regimen("acute pulmonary edema", "40 mg", "IV"), Regimen("ankle swelling", "20 mg", "by mouth")),
    "ondansetron": (Regimen("vomiting, nil by mouth", "4 mg", "IV"), Regimen("mild nausea", "8 mg", "by mouth")),
    "potassium chloride": (Regimen("potassium 2.9, on telemetry", "10 mEq", "IV over one hour"),
                           Regimen("potassium 3.3, eating", "40 mEq", "by mouth")),
    "acetaminophen": (Regimen("fever, nil by mouth", "1 g", "IV over 15 minutes"),
                      Regimen("fever, eating", "650 mg", "by mouth")),
    "haloperidol": (Regimen("severe agitation", "5 mg", "IM"), Regimen("night-time delirium", "0.5 mg", "by mouth")),
    "lorazepam": (Regimen("status epilepticus", "4 mg", "IV"), Regimen("anxiety before MRI", "1 mg", "by mouth")),
    "hydralazine": (Regimen("severe hypertension in pregnancy", "10 mg", "IV"),
                    Regimen("heart failure", "25 mg", "by mouth")),
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
                          "type and screen", "hold the anticoagulant"),
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
)
ACTIONS: dict[str, tuple[str, ...]] = {  # action -> the needs a checklist card may name for it
    "a CT with IV contrast": ("kidney function", "pregnancy status"),
    "an MRI of the spine": ("implanted devices", "kidney function"),
    "IV alteplase": ("last-known-well time", "platelet count"),
    "a heparin infusion": ("platelet count", "kidney function"),
    "methotrexate": ("pregnancy status", "kidney function"),
    "an insulin infusion": ("potassium", "kidney function"),
    "a lumbar puncture": ("platelet count", "implanted devices"),
}
OTHER_FACTS: tuple[str, ...] = ("blood pressure 132/80", "heart rate 84", "temperature 37.1",
                                "oxygen saturation 97 percent", "breakfast at 7")
