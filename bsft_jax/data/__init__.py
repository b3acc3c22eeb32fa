"""BehaviorBench data: record schema + validation, reply format, demo set, chat formatting, Grain pipeline.

Typical use (the demo; a real export goes through ``read_jsonl`` / ``read_dir`` or the TFDS builder)::

    from bsft_jax.data import load_demo, load_demo_tokenizer, make_train_iterator
    splits = load_demo()
    tokenizer = load_demo_tokenizer()            # then bsft_jax.behavior.extend_tokenizer(tokenizer, spec)
    it = make_train_iterator(splits["train"], tokenizer, seq_len=256, batch_size=16, seed=0)
"""

from bsft_jax._lazy import lazy_getattr
from bsft_jax.data.demo import (
    DemoConfig,
    build_demo_tokenizer,
    default_cache_dir,
    demo_dir,
    demo_tokenizer_dir,
    generate_demo,
    generate_split,
    load_demo,
    load_demo_tokenizer,
)
from bsft_jax.data.demo_scenes import FLAG_LABELS
from bsft_jax.data.format import STYLES, FewShotPool, Formatter, render_example, render_prompt, scene_text
from bsft_jax.data.reply import candidate_labels, parse_label, reply_head, target_reply
from bsft_jax.data.schema import (
    NO_INTERVENTION,
    DataError,
    Record,
    Turn,
    label_space,
    read_dir,
    read_jsonl,
    record_from_dict,
    write_jsonl,
)

# The Grain pipeline (which imports JAX) loads on first use, so that the schema stays JAX-free.
_PIPELINE = ("BATCH_KEYS", "BatchIterator", "global_batch", "make_dataset", "make_train_iterator")
__getattr__ = lazy_getattr(__name__, dict.fromkeys(_PIPELINE, "bsft_jax.data.pipeline"))

__all__ = [
    "BATCH_KEYS", "FLAG_LABELS", "NO_INTERVENTION", "STYLES", "BatchIterator", "DataError", "DemoConfig",
    "FewShotPool", "Formatter", "Record", "Turn", "build_demo_tokenizer", "candidate_labels", "default_cache_dir",
    "demo_dir", "demo_tokenizer_dir", "generate_demo", "generate_split", "global_batch", "label_space", "load_demo",
    "load_demo_tokenizer", "make_dataset", "make_train_iterator", "parse_label", "read_dir", "read_jsonl",
    "record_from_dict", "render_example", "render_prompt", "reply_head", "scene_text", "target_reply", "write_jsonl",
]
