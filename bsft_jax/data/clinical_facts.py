"""Small tables of real clinical facts that the demo scenes are drawn from.

Kept deliberately small (a tiny model must learn them in minutes on a CPU) and conventional:
adult reference ranges and critical ("panic") limits as commonly published by hospital labs
(limits vary a little between labs; the demo fixes one set), well-known drug-allergy and
drug-drug conflicts, standard adult doses, and core guideline steps (AHA/ACC STEMI and stroke,
Surviving Sepsis hour-1 bundle, ADA DKA, anaphylaxis and hyperkalemia emergency care).
Values are discretised into bands so that every value the scenes use is known to be
normal, abnormal-but-not-critical ("borderline"), or critical. Demo material, not medical advice.
"""

from __future__ import annotations

import dataclasses


# ----------------------------------------------------------------------------- labs
@dataclasses.dataclass(frozen=True)
class Lab:
    name: str
    unit: str
    reference: str               # reference range as printed on a report
    critical: str                # critical limits as printed
    normal: tuple[str, ...]      # values inside the reference range
    borderline: tuple[str, ...]  # outside the reference range but not critical
    critical_values: tuple[str, ...]


LABS: tuple[Lab, ...] = (
    Lab("potassium", "mmol/L", "3.5-5.0", "below 2.8 or above 6.2",
        ("3.7", "4.0", "4.3", "4.6"), ("3.2", "5.4"), ("2.4", "6.6", "7.1")),
    Lab("sodium", "mmol/L", "135-145", "below 120 or above 160",
        ("136", "138", "140", "143"), ("131", "148"), ("116", "163")),
    Lab("glucose", "mg/dL", "70-140", "below 50 or above 400",
        ("84", "96", "112", "128"), ("62", "188"), ("38", "520")),
    Lab("hemoglobin", "g/dL", "12.0-17.5", "below 7.0",
        ("12.8", "13.6", "14.4", "15.2"), ("10.4", "11.2"), ("5.8", "6.3")),
    Lab("platelets", "x10^3/uL", "150-400", "below 20",
        ("190", "240", "280", "330"), ("112", "460"), ("9", "14")),
    Lab("INR", "", "0.8-1.2", "above 5.0",
        ("0.9", "1.0", "1.1"), ("1.7", "2.6"), ("6.4", "7.8")),
    Lab("calcium", "mg/dL", "8.5-10.5", "below 6.5 or above 13.0",
        ("8.9", "9.4", "9.9"), ("8.1", "11.1"), ("6.1", "13.8")),
    Lab("lactate", "mmol/L", "0.5-2.0", "above 4.0",
        ("0.9", "1.3", "1.8"), ("2.7", "3.3"), ("4.9", "6.2")),
)
LAB_BY_NAME = {lab.name: lab for lab in LABS}


def lab_text(lab: Lab, value: str) -> str:
    """'potassium 6.6 mmol/L' (INR has no unit)."""
    return f"{lab.name} {value} {lab.unit}".rstrip()


# ----------------------------------------------------------------------------- drugs
@dataclasses.dataclass(frozen=True)
class Allergy:
    name: str                     # what the chart says the patient is allergic to
    conflicting: tuple[str, ...]  # drugs that must not be given (same class / cross-reactive)
    why: str


ALLERGIES: tuple[Allergy, ...] = (
    Allergy("penicillin", ("amoxicillin", "ampicillin", "piperacillin-tazobactam"), "a penicillin"),
    Allergy("sulfa drugs", ("trimethoprim-sulfamethoxazole",), "a sulfonamide antibiotic"),
    Allergy("NSAIDs", ("ibuprofen", "naproxen", "ketorolac"), "an NSAID"),
)


@dataclasses.dataclass(frozen=True)
class Interaction:
    home_med: str
    new_drug: str
    effect: str


INTERACTIONS: tuple[Interaction, ...] = (
    Interaction("warfarin", "trimethoprim-sulfamethoxazole", "raises the INR and the bleeding risk"),
    Interaction("warfarin", "fluconazole", "raises the INR and the bleeding risk"),
    Interaction("simvastatin", "clarithromycin", "raises statin levels and the risk of rhabdomyolysis"),
    Interaction("sildenafil", "nitroglycerin", "can cause severe hypotension"),
    Interaction("sertraline", "linezolid", "can cause serotonin syndrome"),
    Interaction("lisinopril", "spironolactone", "can cause dangerous hyperkalemia"),
    Interaction("methotrexate", "trimethoprim-sulfamethoxazole", "can cause bone marrow suppression"),
)
# Home medicines each proposed drug is commonly given with, without a clinically important
# interaction (an explicit whitelist: a pair absent from INTERACTIONS is not assumed safe).
COMPATIBLE: dict[str, tuple[str, ...]] = {
    "amoxicillin": ("simvastatin", "sildenafil", "sertraline", "lisinopril"),
    "ampicillin": ("simvastatin", "sildenafil", "lisinopril"),
    "piperacillin-tazobactam": ("simvastatin", "sildenafil", "lisinopril"),
    "trimethoprim-sulfamethoxazole": ("simvastatin", "sildenafil", "sertraline"),
    "ibuprofen": ("simvastatin", "sildenafil"),
    "naproxen": ("simvastatin", "sildenafil"),
    "ketorolac": ("simvastatin", "sildenafil"),
    "fluconazole": ("lisinopril",),
    "clarithromycin": ("lisinopril",),
    "nitroglycerin": ("warfarin", "simvastatin", "sertraline", "lisinopril", "methotrexate"),
    "linezolid": ("simvastatin", "lisinopril", "sildenafil"),
    "spironolactone": ("simvastatin", "sertraline", "sildenafil", "warfarin"),
}
PROPOSED_DRUGS: tuple[str, ...] = tuple(COMPATIBLE)
HOME_MEDS: tuple[str, ...] = tuple(sorted({i.home_med for i in INTERACTIONS}))


def interaction(home_med: str, new_drug: str) -> Interaction | None:
    """The known interaction of a pair, or None."""
    return next((i for i in INTERACTIONS if i.home_med == home_med and i.new_drug == new_drug), None)


def allergy_conflict(allergy: str, drug: str) -> bool:
    """True when ``drug`` belongs to (or cross-reacts with) the charted allergy."""
    return any(a.name == allergy and drug in a.conflicting for a in ALLERGIES)


@dataclasses.dataclass(frozen=True)
class Dose:
    drug: str
    indication: str
    dose: str        # standard adult dose
    wrong_dose: str  # a tenfold error
    route: str
    wrong_route: str | None  # a dangerous wrong route, where a classic one exists


DOSES: tuple[Dose, ...] = (
    Dose("epinephrine", "anaphylaxis", "0.5 mg", "5 mg", "IM into the thigh", "as an IV push of the 1 mg/mL vial"),
    Dose("aspirin", "suspected myocardial infarction", "325 mg", "3250 mg", "chewed", None),
    Dose("lorazepam", "status epilepticus", "4 mg", "40 mg", "IV", None),
    Dose("acetaminophen", "fever", "1 g", "10 g", "by mouth", None),
    Dose("ceftriaxone", "pneumonia", "1 g", "10 g", "IV once daily", None),
    Dose("morphine", "severe pain", "4 mg", "40 mg", "IV", None),
    Dose("potassium chloride", "hypokalemia", "10 mEq per hour", "100 mEq per hour", "IV infusion", "as an IV push"),
    Dose("insulin glargine", "type 1 diabetes", "20 units", "200 units", "subcutaneously at night", "IV"),
)


# ----------------------------------------------------------------------------- guidelines
@dataclasses.dataclass(frozen=True)
class Protocol:
    condition: str
    steps: tuple[str, ...]   # required steps (all must be in a complete plan)
    extra: tuple[str, ...]   # reasonable but optional steps (distractors)


PROTOCOLS: tuple[Protocol, ...] = (
    Protocol("suspected STEMI", ("get a 12-lead ECG", "give aspirin 325 mg chewed", "activate the cath lab"),
             ("get a chest X-ray", "page cardiology")),
    Protocol("septic shock", ("draw blood cultures", "measure lactate", "start broad-spectrum antibiotics",
                              "give 30 mL/kg crystalloid"), ("place a urinary catheter", "call the family")),
    Protocol("suspected acute stroke", ("get a non-contrast head CT", "check a fingerstick glucose",
                                        "confirm the last-known-well time"), ("request a swallow screen",)),
    Protocol("diabetic ketoacidosis",
             ("start IV fluids", "check potassium before insulin", "start an insulin infusion"),
             ("check a urinalysis",)),
    Protocol("anaphylaxis", ("give IM epinephrine", "assess the airway", "give IV fluids"),
             ("give an antihistamine",)),
    Protocol("upper GI bleeding", ("place two large-bore IVs", "start an IV proton pump inhibitor",
                                   "arrange urgent endoscopy"), ("type and screen",)),
    Protocol("hyperkalemia with ECG changes", ("give IV calcium gluconate", "give insulin with glucose",
                                               "recheck potassium in 2 hours"), ("repeat the ECG",)),
)


@dataclasses.dataclass(frozen=True)
class Deviation:
    """A guideline rule with one number deciding whether the plan follows it."""

    condition: str
    fact: str           # template with {v}: the scene fact that decides
    plan: str           # what the team proposes
    ok_values: tuple[str, ...]
    bad_values: tuple[str, ...]
    rule: str           # the guideline statement quoted in explanations


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation("acute ischemic stroke", "symptoms began {v} hours ago", "give IV alteplase now",
              ("2", "3", "4"), ("6", "9"), "IV alteplase is given within 4.5 hours of symptom onset"),
    Deviation("diabetic ketoacidosis", "potassium is {v} mmol/L", "start the insulin infusion now",
              ("4.1", "4.8", "3.9"), ("2.9", "3.1"), "insulin is held until potassium is at least 3.3 mmol/L"),
    Deviation("septic shock", "lactate is {v} mmol/L and blood pressure is 82/48", "hold IV fluids for now",
              ("1.2",), ("4.6", "5.8"), "lactate of 4 or more, or hypotension, needs 30 mL/kg crystalloid"),
    Deviation("suspected STEMI", "the cath lab is free in {v} minutes", "go ahead with primary PCI",
              ("40", "60", "75"), ("150", "240"), "primary PCI within 90 minutes of first contact, else fibrinolysis"),
    Deviation("community-acquired pneumonia", "the CURB-65 score is {v}", "treat at home with oral antibiotics",
              ("0", "1"), ("3", "4"), "a CURB-65 score of 3 or more calls for hospital care"),
)


# ----------------------------------------------------------------------------- prerequisites
@dataclasses.dataclass(frozen=True)
class Prerequisite:
    action: str        # what the team is about to do
    needs: str         # the fact that must be known first
    known: str         # how a scene states the fact when it is known
    female_only: bool = False


PREREQUISITES: tuple[Prerequisite, ...] = (
    Prerequisite("a CT with IV contrast", "kidney function", "creatinine this morning was 0.9"),
    Prerequisite("metformin", "kidney function", "eGFR is 78"),
    Prerequisite("an MRI of the spine", "implanted devices", "there is no pacemaker or metal implant"),
    Prerequisite("isotretinoin", "pregnancy status", "today's pregnancy test is negative", female_only=True),
    Prerequisite("methotrexate", "pregnancy status", "a pregnancy test yesterday was negative", female_only=True),
    Prerequisite("IV alteplase", "the last-known-well time", "last seen well 90 minutes ago"),
    Prerequisite("a heparin infusion", "the platelet count", "platelets are 240"),
)
OTHER_FACTS: tuple[str, ...] = ("blood pressure is 132/80", "heart rate is 84", "temperature is 37.1",
                                "oxygen saturation is 97 percent", "breakfast was at 7")


# ----------------------------------------------------------------------------- ambiguity
@dataclasses.dataclass(frozen=True)
class Order:
    ambiguous: str
    clear: str
    why: str


ORDERS: tuple[Order, ...] = (
    Order("give morphine 5 now", "give morphine 5 mg IV now", "the order has no unit or route"),
    Order("start MS 2 grams IV", "start magnesium sulfate 2 grams IV",
          "MS can mean morphine sulfate or magnesium sulfate"),
    Order("give insulin 10 U", "give regular insulin 10 units subcutaneously", "'U' can be misread as a zero"),
    Order("turn up the drip", "raise the norepinephrine drip to 8 micrograms per minute",
          "two infusions are running and no target is given"),
    Order("give the potassium", "give potassium chloride 20 mEq by mouth", "no dose, form or route is given"),
    Order("hold the blood thinner", "hold tonight's enoxaparin dose", "the patient is on two anticoagulants"),
)


# ----------------------------------------------------------------------------- restraint
@dataclasses.dataclass(frozen=True)
class ExpectedFinding:
    """A finding that looks alarming out of context but is expected (hold back), or is not (intervene)."""

    context: str
    finding: str  # template with {v}
    ok_values: tuple[str, ...]
    bad_values: tuple[str, ...]
    ok_why: str
    bad_why: str


EXPECTED: tuple[ExpectedFinding, ...] = (
    ExpectedFinding("COPD with chronic CO2 retention, target saturation 88-92 percent",
                    "oxygen saturation is {v} percent",
                    ("88", "90", "91"), ("78", "81"), "within the 88-92 percent target for COPD",
                    "well below the 88-92 percent target"),
    ExpectedFinding("chronic kidney disease stage 4, baseline creatinine 3.0", "creatinine is {v}",
                    ("2.9", "3.1", "3.2"), ("5.6", "6.4"), "at the patient's baseline", "about double the baseline"),
    ExpectedFinding("atrial fibrillation on warfarin, INR goal 2-3", "INR is {v}", ("2.2", "2.5", "2.9"),
                    ("6.4", "7.8"), "inside the 2-3 goal", "far above the 2-3 goal and critical"),
    ExpectedFinding("type 2 diabetes, after lunch", "glucose is {v} mg/dL", ("152", "176", "188"),
                    ("38", "44"), "an expected post-meal value", "critically low"),
    ExpectedFinding("first day after knee surgery", "temperature is {v}", ("37.6", "37.9", "38.0"),
                    ("39.6", "40.1"), "a common mild post-operative rise", "a high fever that needs a workup"),
)


# ----------------------------------------------------------------------------- reactive knowledge
@dataclasses.dataclass(frozen=True)
class ImageFinding:
    modality: str
    finding: str
    diagnosis: str


IMAGE_FINDINGS: tuple[ImageFinding, ...] = (
    ImageFinding("chest X-ray", "a meniscus sign blunting the right costophrenic angle", "pleural effusion"),
    ImageFinding("chest X-ray", "a visceral pleural line with no lung markings beyond it", "pneumothorax"),
    ImageFinding("chest X-ray", "a lobar opacity with air bronchograms", "lobar pneumonia"),
    ImageFinding("chest X-ray", "a cardiothoracic ratio of 0.6", "cardiomegaly"),
    ImageFinding("chest X-ray", "free air under the right hemidiaphragm", "bowel perforation"),
    ImageFinding("head CT", "a crescent-shaped hyperdensity that crosses suture lines", "subdural hematoma"),
    ImageFinding("head CT", "a biconvex hyperdensity that does not cross suture lines", "epidural hematoma"),
    ImageFinding("head CT", "blood in the basal cisterns", "subarachnoid hemorrhage"),
    ImageFinding("abdominal ultrasound", "gallstones with wall thickening and pericholecystic fluid",
                 "acute cholecystitis"),
    ImageFinding("abdominal ultrasound", "a dilated renal pelvis and calyces", "hydronephrosis"),
)
IMAGE_MODALITIES: tuple[str, ...] = tuple(dict.fromkeys(f.modality for f in IMAGE_FINDINGS))


@dataclasses.dataclass(frozen=True)
class Presentation:
    diagnosis: str
    features: tuple[str, ...]  # key discriminating features


PRESENTATIONS: tuple[Presentation, ...] = (
    Presentation("acute myocardial infarction", ("crushing chest pain spreading to the left arm", "sweating",
                                                 "ST elevation in leads II, III and aVF")),
    Presentation("aortic dissection", ("tearing chest pain going through to the back",
                                       "a 30 mmHg blood pressure difference between the arms",
                                       "a widened mediastinum")),
    Presentation("pulmonary embolism", ("sudden pleuritic chest pain", "a swollen left calf after a long flight",
                                        "oxygen saturation of 89 percent")),
    Presentation("acute pericarditis", ("chest pain that eases when leaning forward", "a pericardial friction rub",
                                        "diffuse ST elevation")),
    Presentation("acute appendicitis", ("pain that moved from the navel to the right lower quadrant",
                                        "loss of appetite", "rebound tenderness at McBurney's point")),
    Presentation("acute cholecystitis", ("right upper quadrant pain after a fatty meal", "a positive Murphy sign",
                                         "fever")),
    Presentation("acute pancreatitis", ("epigastric pain going to the back", "heavy alcohol use",
                                        "lipase four times the upper limit")),
    Presentation("bacterial meningitis", ("fever", "neck stiffness", "pain when looking at light")),
    Presentation("diabetic ketoacidosis", ("deep rapid breathing", "glucose of 520 with urine ketones", "vomiting")),
    Presentation("ischemic stroke", ("sudden weakness of the right arm and face", "slurred speech",
                                     "a normal glucose")),
)


@dataclasses.dataclass(frozen=True)
class TimedEvent:
    day: int       # days relative to admission (0 = admission day)
    when: str


TIMES: tuple[TimedEvent, ...] = (
    TimedEvent(-7, "a week before admission"),
    TimedEvent(-3, "three days before admission"),
    TimedEvent(-1, "the day before admission"),
    TimedEvent(0, "on admission"),
    TimedEvent(2, "on hospital day 2"),
    TimedEvent(5, "on hospital day 5"),
)
EVENTS: tuple[str, ...] = (
    "a fever began", "a dry cough started", "ibuprofen was taken", "the chest X-ray showed an infiltrate",
    "antibiotics were started", "a rash appeared", "blood cultures grew Staphylococcus aureus",
    "the creatinine rose", "confusion began", "the patient moved to the ICU",
)


# What each drug in the medication scenes is started for.
DRUG_USES: dict[str, str] = {
    "amoxicillin": "the sinus infection", "ampicillin": "the urinary infection",
    "piperacillin-tazobactam": "the abdominal infection", "trimethoprim-sulfamethoxazole": "the urinary infection",
    "ibuprofen": "the knee pain", "naproxen": "the back pain", "ketorolac": "the post-operative pain",
    "fluconazole": "the yeast infection", "clarithromycin": "the chest infection", "nitroglycerin": "the chest pain",
    "linezolid": "the MRSA wound infection", "spironolactone": "the heart failure",
}
