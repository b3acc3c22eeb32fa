"""The configured BehaviorBench data as records: used by training, evaluation and model set-up alike."""

from __future__ import annotations

import dataclasses
from typing import Any

from bsft_jax import storage
from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.data.demo import DemoConfig, demo_tokenizer_dir, load_demo
from bsft_jax.data.schema import DataError, read_jsonl
from bsft_jax.setup.settings import ConfigError, DataSettings


def demo_config(data: DataSettings) -> DemoConfig:
    """The :class:`bsft_jax.data.DemoConfig` of ``data.demo``."""
    d = data.demo
    return DemoConfig(num_train=d["num_train"], num_validation=d["num_validation"], num_test=d["num_test"],
                      seed=d["seed"])


def demo_tokenizer_path(data: DataSettings, spec: BehaviorSpec) -> str:
    """Folder of the demo set's BPE tokenizer (built and cached on first use)."""
    return demo_tokenizer_dir(config=demo_config(data), vocab_size=data.demo["tokenizer_vocab"], spec=spec)


def _of_categories(records: Any, data: DataSettings, split: str) -> list[Any]:
    """The records of ``data.categories``; each named category must have some in this split."""
    wanted = set(data.categories)
    kept = [r for r in records if r.category in wanted]
    missing = sorted(wanted - {r.category for r in kept})
    if missing:
        present = sorted({r.category for r in records})
        raise DataError(f"config.data.categories: split {split!r} has no record of {missing}; its categories are "
                        f"{present}")
    return kept


def load_split(data: DataSettings, spec: BehaviorSpec, split: str) -> Any:
    """Records (or a random-access TFDS source) of one split of the configured BehaviorBench data.

    ``data.categories`` (non-empty) keeps only those categories' records."""
    if data.categories:
        return _of_categories(load_split(dataclasses.replace(data, categories=()), spec, split), data, split)
    if data.source == "demo":
        return load_demo([split], config=demo_config(data), spec=spec)[split]
    if data.source == "jsonl":
        path = storage.join(data.path, f"{split}.jsonl")
        if not storage.isfile(path):
            raise DataError(f"{path}: no such file (config.data.path={data.path!r} needs one <split>.jsonl per split)")
        records = read_jsonl(path, field_map=dict(data.field_map) or None, spec=spec)
        if not records:
            raise DataError(f"{path}: no records (the file is empty or holds only blank lines); put one JSON "
                            "record per line, or point config.data.path at another folder")
        return records
    if data.source == "tfds":
        from bsft_jax.data.tfds_builder import data_source  # import-time cost: tensorflow_datasets (seconds)

        return data_source(split, data_dir=data.path)
    raise ConfigError(f"config.data.source={data.source!r} has no {split!r} split (synthetic data is for smoke "
                      "runs); set config.data.source to 'demo', 'jsonl' or 'tfds'")
