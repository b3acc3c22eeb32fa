"""TFDS builder for BehaviorBench: a directory of JSONL files -> array_record splits, no TensorFlow needed.

Build once, read many times (random access, what Grain wants)::

    from bsft_jax.data.tfds_builder import build, data_source
    build("/data/behaviorbench_jsonl", data_dir="/data/tfds")          # validates every line first
    train = data_source("train", data_dir="/data/tfds")                # tfds.data_source; feed it to
    it = make_train_iterator(train, tokenizer, seq_len=..., batch_size=...)   # the Grain pipeline

Splits are by ``case_id``: no case is in two splits. If the directory has ``train.jsonl``,
``validation.jsonl`` and ``test.jsonl`` those are the splits (checked for shared cases);
otherwise all ``*.jsonl`` files are pooled and whole cases are assigned to splits in a seeded
order until each split holds its fraction of the records (``split_fractions``). A ``test_hard``
split holds the test records marked ``hard`` (BehaviorBench-Hard). ``turns`` and ``options`` are
stored as JSON text; records read back with :func:`bsft_jax.data.schema.record_from_dict`.
TFDS writes into a temporary folder and renames it when complete, so a failed build leaves no
half-written dataset; a bad input line fails before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from bsft_jax import files, storage
from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.data.schema import DataError, Record, read_dir, read_jsonl

NAME = "behavior_bench"
SPLIT_FILES: tuple[str, ...] = ("train", "validation", "test")


def split_by_case(records: Sequence[Record], fractions: Sequence[float] = (0.8, 0.1, 0.1), *,
                  seed: int = 0, names: Sequence[str] = SPLIT_FILES) -> dict[str, list[Record]]:
    """Assigns whole cases to splits in a seeded order until each split has its fraction of records.

    Deterministic for (records, fractions, seed); every record lands in exactly one split, and all
    records of a case land in the same one. Split sizes are within one case of the fractions.
    """
    if len(fractions) != len(names) or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split_fractions {tuple(fractions)} must be {len(names)} non-negative numbers summing to 1")
    by_case: dict[str, list[Record]] = {}
    for r in records:
        by_case.setdefault(r.case_id, []).append(r)
    cases = sorted(by_case)
    random.Random(seed).shuffle(cases)
    targets = np.cumsum(fractions) * len(records)
    out: dict[str, list[Record]] = {n: [] for n in names}
    done, k = 0, 0
    for case in cases:
        while k < len(names) - 1 and done >= targets[k] - 1e-9:
            k += 1
        out[names[k]].extend(by_case[case])
        done += len(by_case[case])
    return out


def _check_disjoint(splits: Mapping[str, Sequence[Record]], where: str) -> None:
    seen: dict[str, str] = {}
    for name, recs in splits.items():
        for r in recs:
            if seen.setdefault(r.case_id, name) != name:
                raise DataError(f"{where}: case_id {r.case_id!r} is in both {seen[r.case_id]}.jsonl and {name}.jsonl; "
                                "a case must stay in one split (merge the files to let the builder split by case)")


def _features() -> tfds.features.FeaturesDict:
    text = tfds.features.Text
    return tfds.features.FeaturesDict({
        "id": text(), "case_id": text(), "category": text(), "group": text(), "behavior": text(),
        "label": text(), "response": text(),
        "turns": text(doc="JSON list of {speaker, text}"),
        "options": text(doc="JSON object {letter: text}, or empty for flag tasks"),
        "hard": tfds.features.Scalar(np.bool_),
    })


def _example(r: Record) -> dict[str, Any]:
    ex = r.to_json()
    ex["turns"] = json.dumps(ex["turns"], ensure_ascii=False)
    ex["options"] = json.dumps(ex["options"], ensure_ascii=False) if "options" in ex else ""
    return ex


class BehaviorBench(tfds.core.GeneratorBasedBuilder):
    """BehaviorBench from local JSONL (see module docstring). Reading back needs no ``source_dir``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Splits by case_id; test_hard split; turns/options stored as JSON text."}

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        # Not a TFDS catalog package: no checksums file to find (tfds would otherwise probe package
        # resources, which needs the optional importlib_resources module), and nothing is downloaded.
        return None

    def __init__(
        self,
        *,
        source_dir: str | None = None,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        field_map: Mapping[str, str] | None = None,
        category_aliases: Mapping[str, str] | None = None,
        spec: BehaviorSpec | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("file_format", "array_record")
        self._source_dir = source_dir
        self._fractions, self._split_seed = tuple(split_fractions), split_seed
        self._read_kw = dict(field_map=field_map, category_aliases=category_aliases, spec=spec)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly (not dataset_info_from_configs, which needs an installed package).
        return tfds.core.DatasetInfo(
            builder=self,
            description="BehaviorBench tasks: multi-turn clinical scenes with a behavior token and a scored label.",
            features=_features(),
            homepage="https://arxiv.org/abs/2505.21757",
        )

    def load_splits(self) -> dict[str, list[Record]]:
        """Validated records per split, by case (the same grouping the build writes)."""
        if not self._source_dir:
            raise ValueError("BehaviorBench(source_dir=...) is needed to build; reading a built dataset does not")
        files = {n: os.path.join(self._source_dir, f"{n}.jsonl") for n in SPLIT_FILES}
        if all(os.path.isfile(f) for f in files.values()):
            splits = {n: read_jsonl(f, **self._read_kw) for n, f in files.items()}
            _check_disjoint(splits, self._source_dir)
        else:
            splits = split_by_case(read_dir(self._source_dir, **self._read_kw), self._fractions, seed=self._split_seed)
        hard = [r for r in splits["test"] if r.hard]
        if hard:
            splits["test_hard"] = hard
        return splits

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        del dl_manager  # local files only; nothing is downloaded
        return {name: self._generate_examples(recs) for name, recs in self.load_splits().items() if recs}

    def _generate_examples(self, records: Sequence[Record]):
        for r in records:
            yield r.id, _example(r)


def build(source_dir: str, *, data_dir: str, **builder_kwargs: Any) -> BehaviorBench:
    """Builds (or finds already built) BehaviorBench under ``data_dir`` from a JSONL directory."""
    builder = BehaviorBench(source_dir=source_dir, data_dir=data_dir, **builder_kwargs)
    builder.download_and_prepare()
    return builder


def data_source(split: str, *, data_dir: str) -> Any:
    """Random-access ``tfds.data_source`` of a built split (elements are dicts of bytes / numpy).

    A ``gs://`` ``data_dir`` is read from a local mirror (:func:`local_mirror`): array_record's reader
    opens only local files (on a bucket path it blocks in its native file layer).
    """
    if storage.is_url(data_dir):
        data_dir = local_mirror(data_dir)
    return tfds.data_source(NAME, split=split, data_dir=data_dir, download=False)


def local_mirror(url: str, cache_dir: str | None = None) -> str:
    """A local copy of the built dataset under ``url`` (``<url>/behavior_bench/...``), made once per host.

    It lives in ``<cache>/tfds_mirror/<hash of url>`` (cache: :func:`bsft_jax.files.cache_dir`); a copy whose file
    list and sizes match the bucket's is reused, anything else is copied again into a fresh folder
    that replaces the old one only when complete.
    """
    src = storage.join(url, NAME)
    if not storage.isdir(src):
        raise DataError(f"{src}: no built {NAME} dataset here (build it with bsft_jax.data.tfds_builder.build)")
    manifest = {rel: storage.size(storage.join(src, rel)) for rel in storage.walk_files(src)}
    root = os.path.join(cache_dir or files.cache_dir(), "tfds_mirror", hashlib.sha1(url.encode()).hexdigest()[:16])
    marker = os.path.join(root, "manifest.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == manifest:
                return root
    tmp = f"{root}.partial-{os.getpid()}"
    for rel in manifest:
        storage.copy_file(storage.join(src, rel), os.path.join(tmp, NAME, *rel.split("/")))
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    files.replace_dir(tmp, root)
    return root
