"""The embedded BehaviorBench demo set: deterministic generation, on-disk cache, and its tokenizer.

Two calls give a demo run everything it needs, with no download::

    splits = load_demo()                       # {"train": [...5200], "validation": [...520], "test": [...1040]}
    tokenizer = load_demo_tokenizer()          # small byte-level BPE, ChatML template, HF folder (cached)

Scenes come from :mod:`bsft_jax.data.demo_scenes` (one generator per category; docs/data.md, "The demo
benchmark"); splits are generated separately with split-specific case ids (``demo-<split>-<n>``), so
no case is in two splits and split sizes are exact. Each scene's held-out combination decides
which split may use it (:func:`split_of`), so no test scene copies a train scene. Each case is
one patient with 1-3 scenes of different categories. Categories are balanced within a split
(sizes that are multiples of 13 are exact).
Caches live under ``$BSFT_JAX_CACHE`` or ``~/.cache/bsft_jax`` (:func:`bsft_jax.files.cache_dir`) and are
written atomically (temp folder, then rename), so an interrupted run never leaves a half-written cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bsft_jax.behavior import taxonomy
from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.data.demo_scenes import FLAG_LABELS, GENERATORS, Infeasible, random_patient
from bsft_jax.data.format import explicit_instruction_prompt, scene_text
from bsft_jax.data.reply import target_reply
from bsft_jax.data.schema import NO_INTERVENTION, Record, read_jsonl, write_jsonl
from bsft_jax.files import cache_dir as default_cache_dir  # the public name of the one cache folder
from bsft_jax.files import replace_dir

DEMO_VERSION = "2.2.0"  # bump when generated content changes (it is part of the cache key)
# 2.2.0: Missing Information charts list 3 prerequisites, one unchecked; value categories hold out value classes.
# 2.1.0: per-scene order-set lines, reference ranges and feature -> diagnosis pairings; one-decimal
# weights; a reference card in every scene; labels drawn per category (equal intervene rates);
# hard items in every flag category; drug x allergy class held out.
_RNG_VERSION = "2.2.0"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
CHATML_SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Size and seed of the demo set (defaults: 5200 / 520 / 1040 scenes, 400 / 40 / 80 per category)."""

    num_train: int = 5200
    num_validation: int = 520
    num_test: int = 1040
    seed: int = 0

    def size(self, split: str) -> int:
        if split not in SPLITS:
            raise KeyError(f"unknown demo split {split!r}; expected one of {SPLITS}")
        return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}[split]


SPLIT_BUCKETS: dict[str, range] = {"train": range(0, 8), "validation": range(8, 9), "test": range(9, 10)}


def split_of(category: str, combo: tuple) -> str:
    """The split a scene's held-out combination belongs to (80 / 10 / 10 of combinations, by hash).

    Combinations (lab x limit band, drug x home medicine, protocol x missed step, ...) are printed in
    the scene, so two scenes of different splits always differ: no test scene copies a train scene.
    """
    bucket = int(hashlib.sha1(f"{category}|{combo!r}".encode()).hexdigest(), 16) % 10
    return next(s for s, r in SPLIT_BUCKETS.items() if bucket in r)


def _scene_for_split(split: str, category: str, patient: Any, key: str, label: str | None) -> Any:
    for attempt in range(10_000):
        try:
            scene = GENERATORS[category](random.Random(f"{key}/{attempt}"), patient, force_label=label)
        except Infeasible:  # e.g. a dose error on a card whose two lines differ in route
            continue
        if split_of(category, scene.combo) == split:
            return scene
    raise RuntimeError(f"no {split} scene for {category!r} in 10000 draws (combination space too small)")


def _planned_labels(categories: Sequence[str], rng: random.Random) -> list[str | None]:
    """The label of each slot of a flag category, fixed before its scene is drawn.

    Half of a category's slots (rounded down) intervene, the flag labels taking turns, the rest hold
    back, shuffled. So every flag category has the same intervene rate in every split (the category
    tells nothing about the decision), and redrawing a scene for its split cannot skew the labels.
    Multiple-choice slots get None (the generator draws the answer).
    """
    planned: list[str | None] = [None] * len(categories)
    for category, labels in FLAG_LABELS.items():
        slots = [i for i, c in enumerate(categories) if c == category]
        flags = [labels[k % (len(labels) - 1)] for k in range(len(slots) // 2)]
        plan = flags + [NO_INTERVENTION] * (len(slots) - len(flags))
        rng.shuffle(plan)
        for i, label in zip(slots, plan):
            planned[i] = label
    return planned


def generate_split(split: str, num_records: int, *, seed: int = 0, spec: BehaviorSpec | None = None) -> list[Record]:
    """``num_records`` scenes of one split, deterministic in (split, seed). Records carry their behavior.

    The behavior of every record is ``spec.behavior_for_item(...)``: its category's token under the
    group scheme, its decision (answer / intervene / hold) under the item scheme. Each scene's
    combination is drawn again until it belongs to ``split`` (:func:`split_of`).
    """
    spec = spec or BehaviorSpec()
    rng = random.Random(f"bsft-demo/{_RNG_VERSION}/{seed}/{split}")
    categories = [taxonomy.CATEGORY_NAMES[i % len(taxonomy.CATEGORY_NAMES)] for i in range(num_records)]
    rng.shuffle(categories)
    planned = _planned_labels(categories, rng)
    records: list[Record] = []
    case = 0
    while len(records) < num_records:
        case_id = f"demo-{split}-{case:05d}"
        case_rng = random.Random(f"{seed}/{split}/{case}")
        patient = random_patient(case_rng)
        for j in range(min(case_rng.choice((1, 2, 3)), num_records - len(records))):
            category = categories[len(records)]
            scene = _scene_for_split(split, category, patient, f"{seed}/{split}/{case}/{j}", planned[len(records)])
            behavior = spec.behavior_for_item(category, scene.label, scene.options is not None)
            records.append(Record(
                id=f"{case_id}-{j}", case_id=case_id, category=category, group=taxonomy.group_of(category),
                turns=scene.turns, behavior=behavior, label=scene.label,
                response=scene.response, options=scene.options, hard=scene.hard))
        case += 1
    return records


def generate_demo(config: DemoConfig = DemoConfig(), spec: BehaviorSpec | None = None) -> dict[str, list[Record]]:
    """All three splits, in memory (no cache)."""
    return {s: generate_split(s, config.size(s), seed=config.seed, spec=spec) for s in SPLITS}


def _spec_key(spec: BehaviorSpec) -> str:
    blob = json.dumps([list(spec.names), sorted(spec.category_map.items())]
                      + ([spec.scheme] if spec.scheme != "group" else []))
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def demo_dir(config: DemoConfig = DemoConfig(), *, cache_dir: str | None = None,
             spec: BehaviorSpec | None = None) -> str:
    """The cache folder of one demo configuration; generated (atomically) on first use.

    Holds ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` and ``manifest.json``; it is a plain
    BehaviorBench JSONL directory, so :mod:`bsft_jax.data.tfds_builder` can build from it too.
    """
    spec = spec or BehaviorSpec()
    name = (f"v{DEMO_VERSION}-seed{config.seed}-{config.num_train}-{config.num_validation}-{config.num_test}"
            f"-{_spec_key(spec)}")
    final = os.path.join(cache_dir or default_cache_dir(), "demo", name)
    if os.path.isfile(os.path.join(final, "manifest.json")):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp.", dir=os.path.dirname(final))
    try:
        counts = {}
        for split, records in generate_demo(config, spec).items():
            write_jsonl(records, os.path.join(tmp, f"{split}.jsonl"))
            counts[split] = len(records)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:  # written last: marks a complete folder
            json.dump({"version": DEMO_VERSION, "config": dataclasses.asdict(config), "counts": counts,
                       "behaviors": list(spec.names)}, f, indent=2)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _publish(tmp: str, final: str) -> None:
    """Renames a finished temp folder into place; if another process won the race, keeps theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not os.path.isfile(os.path.join(final, "manifest.json")):
            shutil.rmtree(final, ignore_errors=True)  # a stale partial folder (never made by us, but be safe)
            os.replace(tmp, final)


def load_demo(
    splits: Sequence[str] = SPLITS,
    *,
    config: DemoConfig = DemoConfig(),
    cache_dir: str | None = None,
    spec: BehaviorSpec | None = None,
) -> dict[str, list[Record]]:
    """The demo splits as validated records, generated and cached on first use."""
    folder = demo_dir(config, cache_dir=cache_dir, spec=spec)
    return {s: read_jsonl(os.path.join(folder, f"{s}.jsonl"), spec=spec) for s in splits}


# ----------------------------------------------------------------------------- tokenizer
def tokenizer_corpus(records: Iterable[Record], spec: BehaviorSpec | None = None) -> Iterable[str]:
    """Texts the demo tokenizer is trained on: rendered scenes, replies and the instruction prompt."""
    yield explicit_instruction_prompt(spec or BehaviorSpec())
    yield "system user assistant"
    for r in records:
        yield scene_text(r)
        yield target_reply(r)


def build_demo_tokenizer(texts: Iterable[str], out_dir: str, *, vocab_size: int = 3072) -> Any:
    """Trains a byte-level BPE on ``texts`` and saves an HF tokenizer folder (atomic) with ChatML.

    Specials ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (eos) get ids 0, 1, 2. Behavior
    tokens are NOT added here: the trainer adds them with ``bsft_jax.behavior.extend_tokenizer``,
    the same code path as for a real checkpoint's tokenizer. Returns the loaded
    ``PreTrainedTokenizerFast``; the folder loads with ``transformers.AutoTokenizer``.
    """
    # import-time cost (seconds for transformers): only when the demo tokenizer is built or loaded
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[AddedToken(s, special=True, normalized=False)
                                                  for s in CHATML_SPECIALS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tokenizer.tmp.", dir=parent)
    try:
        tok.save_pretrained(tmp)
        if os.path.exists(out_dir):
            replace_dir(tmp, out_dir)
        else:
            _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def demo_tokenizer_dir(
    *,
    config: DemoConfig = DemoConfig(),
    cache_dir: str | None = None,
    vocab_size: int = 3072,
    spec: BehaviorSpec | None = None,
) -> str:
    """Folder of the demo tokenizer (trained on the demo train split), built and cached on first use."""
    spec = spec or BehaviorSpec()
    folder = demo_dir(config, cache_dir=cache_dir, spec=spec)
    out = os.path.join(folder, f"tokenizer-{vocab_size}")
    if not os.path.isfile(os.path.join(out, "tokenizer.json")):
        train = read_jsonl(os.path.join(folder, "train.jsonl"), spec=spec)
        build_demo_tokenizer(tokenizer_corpus(train, spec), out, vocab_size=vocab_size)
    return out


def load_demo_tokenizer(**kwargs: Any) -> Any:
    """``AutoTokenizer`` of :func:`demo_tokenizer_dir` (same keyword arguments)."""
    from transformers import AutoTokenizer  # import-time cost: see build_demo_tokenizer

    return AutoTokenizer.from_pretrained(demo_tokenizer_dir(**kwargs))


def label_counts(records: Iterable[Record]) -> Mapping[str, Mapping[str, int]]:
    """category -> label -> count (for reports and balance checks)."""
    out: dict[str, dict[str, int]] = {}
    for r in records:
        out.setdefault(r.category, {}).setdefault(r.label, 0)
        out[r.category][r.label] += 1
    return out
