"""The configured BehaviorBench data as records: used by training, evaluation and model set-up alike."""

from __future__ import annotations

from typing import Any

from bsft_jax import storage
from bsft_jax.behavior.spec import BehaviorSpec


def demo_config(cfg: Any) -> Any:
    """The :class:`bsft_jax.data.DemoConfig` of ``data.demo``."""
    from bsft_jax.data import DemoConfig

    d = cfg.data.demo
    return DemoConfig(num_train=d.num_train, num_validation=d.num_validation, num_test=d.num_test, seed=d.seed)


def demo_tokenizer_path(cfg: Any) -> str:
    """Folder of the demo set's BPE tokenizer (built and cached on first use)."""
    from bsft_jax.data import demo_tokenizer_dir

    return demo_tokenizer_dir(config=demo_config(cfg), vocab_size=cfg.data.demo.tokenizer_vocab,
                              spec=BehaviorSpec.from_config(cfg.behavior))


def load_split(cfg: Any, split: str) -> Any:
    """Records (or a random-access TFDS source) of one split of the configured BehaviorBench data."""
    from bsft_jax.data import load_demo, read_jsonl

    d, spec = cfg.data, BehaviorSpec.from_config(cfg.behavior)
    if d.source == "demo":
        return load_demo([split], config=demo_config(cfg), spec=spec)[split]
    if d.source == "jsonl":
        return read_jsonl(storage.join(d.path, f"{split}.jsonl"), field_map=dict(d.field_map) or None, spec=spec)
    if d.source == "tfds":
        from bsft_jax.data.tfds_builder import data_source

        return data_source(split, data_dir=d.path)
    raise ValueError(f"config.data.source={d.source!r} has no splits")
