"""The SmolLM2 BehaviorSFT recipe, a few steps from the real weights, exported and loaded by transformers."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import torch

from bsft_jax import generate
from bsft_jax.export import export_checkpoint
from bsft_jax.run.checkpoint import load_params
from bsft_jax.run.config import load_config_file
from bsft_jax.train import run

from .common import CLINICAL_PROMPTS, chat_ids, hf_logits, hf_model, left_padded, tokenizer
from .test_parity import FP32_TOL

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 3


def test_finetune_smollm2_with_behavior_tokens_and_export(smollm2_dir, tmp_path):
    cfg = load_config_file(os.path.join(ROOT, "configs", "smollm2_135m_behaviorsft.py"),
                           "smollm2_135m_behaviorsft.py")
    assert cfg.model.hf_path == "builtin:smollm2-135m-instruct"  # resolved to the session's cached folder
    cfg.run_dir = str(tmp_path / "run")
    cfg.train.update(steps=STEPS, global_batch_size=2, eval_every=-1)
    cfg.data.seq_len = 128
    cfg.data.demo.update(num_train=64, num_validation=8, num_test=16)  # a few batches are all 3 steps use
    cfg.optimizer.update(warmup_steps=1, learning_rate=1e-4)
    cfg.checkpoint.update(every_steps=STEPS, async_save=False)
    cfg.logging.tensorboard = False
    cfg.mesh.fsdp = 1
    run(cfg, devices=jax.devices()[:1])
    out = export_checkpoint(cfg.run_dir, str(tmp_path / "hf"), dtype="float32")

    model, config, meta = load_params(cfg.run_dir, dtype="float32")
    assert config.vocab_size == 49_280 and config.valid_vocab_size == 49_155
    tok = tokenizer(out)
    behavior_ids = [meta["behavior"]["token_ids"][n] for n in meta["behavior"]["names"]]
    assert [tok.convert_tokens_to_ids(meta["behavior"]["token_format"].format(name=n))
            for n in meta["behavior"]["names"]] == behavior_ids

    # the weights moved away from the base model
    base, _ = __import__("bsft_jax").load_hf(smollm2_dir, dtype="float32")
    assert not np.array_equal(np.asarray(base.layers.mlp.up_proj.get_value()),
                              np.asarray(model.layers.mlp.up_proj.get_value()))
    del base

    hf = hf_model(out)
    prompts = [[*chat_ids(tok, q), behavior_ids[i % 3]] for i, q in enumerate(CLINICAL_PROMPTS)]
    ids, mask, pos = left_padded(prompts, tok.pad_token_id)
    real = mask.astype(bool)
    expected = hf_logits(hf, ids, mask, pos)[..., : config.valid_vocab_size]
    got = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))[..., : config.valid_vocab_size]
    err = float(np.abs(got - expected)[real].max())
    print(f"\nfine-tuned SmolLM2 export: fp32 max |dlogit| = {err:.2e}")
    assert err <= FP32_TOL
    assert np.array_equal(got.argmax(-1)[real], expected.argmax(-1)[real])

    ours = generate(model, prompts, max_new_tokens=16, eos_ids=config.stop_token_ids, pad_id=tok.pad_token_id)
    for prompt, got_ids in zip(prompts, ours, strict=True):
        t = torch.tensor([prompt])
        with torch.no_grad():
            theirs = hf.generate(t, attention_mask=torch.ones_like(t), do_sample=False, max_new_tokens=16,
                                 pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
        assert got_ids == theirs
        assert tok.decode(got_ids) == tok.decode(theirs)
