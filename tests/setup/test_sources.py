"""Model and data sources: a local HF folder (+ behavior tokens), JSONL BehaviorBench, shipped configs."""

from __future__ import annotations

import glob
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from bsft_jax.checkpoint.read import load_params, read_meta
from bsft_jax.models import load_hf
from bsft_jax.setup.config import ConfigError, load_config_file, validate_config
from bsft_jax.train.loop import run
from tests.helpers import save_tiny
from tests.train.common import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("kind, tie", [("qwen2", False), ("llama", True)])
def test_finetune_from_hf_folder_with_behavior_tokens(tmp_path, kind, tie):
    folder, _ = save_tiny(tmp_path, kind, tie=tie)  # vocab 256 rows
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"), **{
        "model.source": "hf", "model.hf_path": folder, "train.steps": 4, "checkpoint.every_steps": 4,
        "optimizer.learning_rate": 1e-3})
    result = run(cfg, devices=jax.devices()[:1])
    assert result.final_step == 4 and np.isfinite(result.last_metrics["loss"])

    meta = read_meta(cfg.run_dir)
    ids = meta["behavior"]["token_ids"]
    # the tiny tokenizer has 64 entries: the 3 behavior tokens take spare rows 64..66, no growth
    assert sorted(ids.values()) == [64, 65, 66]
    mc = meta["model_config"]
    assert mc["vocab_size"] == 256 and mc["valid_vocab_size"] == 67 and mc["tie_word_embeddings"] == tie
    src_eos = [255, 253] if kind == "llama" else [255]
    assert meta["stop_token_ids"][:len(src_eos)] == src_eos  # the source checkpoint's EOS ids survive
    saved_tok = os.path.join(cfg.run_dir, meta["tokenizer_dir"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(saved_tok)
    assert tok.convert_tokens_to_ids("<|behavior:proactive|>") == ids["proactive"]
    assert json.load(open(os.path.join(cfg.run_dir, "model_config.json")))["valid_vocab_size"] == 67

    # fine-tuning moved the weights away from the HF ones, but kept their rows (behavior rows aside)
    base, _ = load_hf(folder)
    tuned, _, _ = load_params(cfg.run_dir)
    e0 = np.asarray(nnx.state(base)["embed"].get_value())
    e1 = np.asarray(nnx.state(tuned)["embed"].get_value())
    assert e1.shape == e0.shape
    assert 0 < np.abs(e1[:64] - e0[:64]).max() < 0.05  # 4 small AdamW steps (lr 1e-3)


def test_general_sft_on_jsonl_behaviorbench(tmp_path):
    from bsft_jax.data import generate_split, write_jsonl

    data = tmp_path / "bb"
    data.mkdir()
    write_jsonl(generate_split("train", 39, seed=1), str(data / "train.jsonl"))
    write_jsonl(generate_split("test", 26, seed=2), str(data / "test.jsonl"))
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"), **{
        "data.source": "jsonl", "data.path": str(data), "data.style": "general_sft", "behavior.enabled": False,
        "tokenizer.path": "demo", "data.seq_len": 192, "train.steps": 3, "train.eval_every": 0, "data.eval_batches": -1,
        "checkpoint.every_steps": 3})
    result = run(cfg, devices=jax.devices()[:1])
    assert result.final_step == 3
    assert result.eval_metrics["first_tokens"] == 26  # one pass over the test split, every reply counted
    meta = read_meta(cfg.run_dir)
    assert meta["behavior"] == {"enabled": False, "names": ["reactive", "balanced", "proactive"],
                                "token_format": "<|behavior:{name}|>", "token_ids": {}}
    # GeneralSFT adds no behavior token to the vocabulary
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(cfg.run_dir, "tokenizer"))
    assert "<|behavior:proactive|>" not in tok.get_vocab()


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_shipped_configs_validate(tmp_path, path):
    cfg = load_config_file(path, os.path.basename(path))
    hf, _ = save_tiny(tmp_path, "qwen2")
    if cfg.model.source == "hf" and not cfg.model.hf_path.startswith("builtin:"):
        with pytest.raises(ConfigError, match="config.model.hf_path"):  # no model at the default path here
            validate_config(cfg, num_devices=8)
        cfg.model.hf_path = hf
    if cfg.data.source == "jsonl":
        (tmp_path / "bb").mkdir()
        for split in ("train", "test"):
            (tmp_path / "bb" / f"{split}.jsonl").write_text("")
        cfg.data.path = str(tmp_path / "bb")
    n = 8 if cfg.train.global_batch_size % 8 == 0 else 1  # the CPU demo recipes use a batch of 4
    mesh = validate_config(cfg, num_devices=n)
    assert mesh["data"] * mesh["fsdp"] * mesh["tensor"] == n
    assert cfg.behavior.enabled == (cfg.data.style == "behavior_sft")
    assert ("generalsft" in path) == (not cfg.behavior.enabled)


def test_data_categories_keep_only_those_records_in_every_split(tmp_path):
    from bsft_jax.data import DataError, generate_demo
    from bsft_jax.data.schema import write_jsonl
    from bsft_jax.setup.settings import Settings
    from bsft_jax.setup.sources import load_split

    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"), **{
        "data.source": "jsonl", "data.path": str(tmp_path),
        "data.categories": ("Medication Safety Check", "Critical Value Flagging")})
    settings = Settings.from_config(cfg)
    data, spec = settings.data, settings.behavior.spec
    splits = generate_demo(spec=spec)
    for name, records in splits.items():
        write_jsonl(records, str(tmp_path / f"{name}.jsonl"))
    for name in ("train", "test"):
        got = load_split(data, spec, name)
        assert {r.category for r in got} == {"Medication Safety Check", "Critical Value Flagging"}
        assert len(got) == sum(r.category in data.categories for r in splits[name])
    import dataclasses

    with pytest.raises(DataError, match=r"config.data.categories: split 'train' has no record of \['Nope'\]"):
        load_split(dataclasses.replace(data, categories=("Nope",)), spec, "train")
    cfg.data.source, cfg.data.path = "tfds", str(tmp_path)
    with pytest.raises(ConfigError, match="config.data.categories"):
        validate_config(cfg, num_devices=1)
