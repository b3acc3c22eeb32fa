"""The SmolLM2 recipes from the real weights: BehaviorSFT a few steps, exported and loaded by transformers;
GeneralSFT one step."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import torch

from bsft_jax import generate
from bsft_jax.checkpoint.read import load_params
from bsft_jax.export import export_checkpoint
from bsft_jax.setup.config import load_config_file
from bsft_jax.train import run

from .common import CLINICAL_PROMPTS, chat_ids, hf_logits, hf_model, left_padded, tokenizer
from .policy import report
from .test_parity import FP32_TOL

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 3
NEW_TOKENS = 32


def _short_recipe(recipe: str, run_dir: str, steps: int):
    """The recipe as shipped, cut to ``steps`` small steps on a small demo set."""
    cfg = load_config_file(os.path.join(ROOT, "configs", recipe), recipe)
    assert cfg.model.hf_path == "builtin:smollm2-135m-instruct"  # resolved to the session's cached folder
    cfg.run_dir = run_dir
    cfg.train.update(steps=steps, global_batch_size=2, eval_every=-1)
    cfg.data.seq_len = 128
    cfg.data.demo.update(num_train=64, num_validation=8, num_test=16)  # a few batches are all the steps use
    cfg.optimizer.update(warmup_steps=1, learning_rate=1e-4)
    cfg.checkpoint.update(every_steps=steps, async_save=False)
    cfg.logging.tensorboard = False
    cfg.mesh.fsdp = 1
    return cfg


def test_generalsft_recipe_one_step_on_real_weights(smollm2_dir, tmp_path):
    cfg = _short_recipe("smollm2_135m_generalsft.py", str(tmp_path / "run"), steps=1)
    assert not cfg.behavior.enabled and cfg.data.style == "general_sft"
    result = run(cfg, devices=jax.devices()[:1])
    loss = result.last_metrics["loss"]
    report(f"smollm2 GeneralSFT recipe, 1 step from the real weights: loss {loss:.3f}")
    assert result.final_step == 1 and np.isfinite(loss)
    assert 0.1 < loss < 8.0  # a pretrained model's loss on English text, far below log(49152) = 10.8
    _, config, meta = load_params(cfg.run_dir, dtype="float32")
    assert config.vocab_size == 49_152 and not (meta.get("behavior") or {}).get("token_ids")  # no surgery


def test_finetune_smollm2_with_behavior_tokens_and_export(smollm2_dir, tmp_path):
    cfg = _short_recipe("smollm2_135m_behaviorsft.py", str(tmp_path / "run"), steps=STEPS)
    run(cfg, devices=jax.devices()[:1])
    out = export_checkpoint(cfg.run_dir, str(tmp_path / "hf"), dtype="float32")

    model, config, meta = load_params(cfg.run_dir, dtype="float32")
    assert config.vocab_size == 49_280 and config.valid_vocab_size == 49_155
    tok = tokenizer(out)
    behavior_ids = [meta["behavior"]["token_ids"][n] for n in meta["behavior"]["names"]]
    token_names = [meta["behavior"]["token_format"].format(name=n) for n in meta["behavior"]["names"]]
    assert [tok.convert_tokens_to_ids(t) for t in token_names] == behavior_ids

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
    assert err <= FP32_TOL
    assert np.array_equal(got.argmax(-1)[real], expected.argmax(-1)[real])

    text = tok.apply_chat_template([{"role": "user", "content": CLINICAL_PROMPTS[1]},
                                    {"role": "assistant", "content": f"{token_names[0]}Check the dose."}],
                                   tokenize=False)  # the exported tokenizer's chat template renders it
    assert token_names[0] in text and tok(text, add_special_tokens=False)["input_ids"].count(behavior_ids[0]) == 1

    stops = list(config.stop_token_ids)
    # With the stop tokens (as served): both stop at the same place. The recipe's demo answers are
    # short ("Answer: B" ...), so the fine-tuned model can end early (one prompt after 16 tokens when
    # measured); to compare 32 tokens of every prompt the second round runs past the stop token.
    with_stops = _greedy_pairs(model, hf, tok, prompts, stops, config.valid_vocab_size)
    no_stops = _greedy_pairs(model, hf, tok, prompts, [], config.valid_vocab_size)
    for ours, theirs in [*with_stops, *no_stops]:
        assert ours == theirs and tok.decode(ours) == tok.decode(theirs)
    assert all(len(ours) == NEW_TOKENS for ours, _ in no_stops)  # did not stop early: 32 tokens each
    stopped = [len(ours) for ours, _ in with_stops]
    report(f"fine-tuned SmolLM2 export: fp32 max |dlogit| {err:.2e}; greedy == transformers, {len(prompts)} prompts "
           f"x {NEW_TOKENS} tokens (with stop tokens they end after {stopped} tokens, equal on both sides)")


def _greedy_pairs(model, hf, tok, prompts, stops: list[int], valid: int) -> list[tuple[list[int], list[int]]]:
    """(bsft_jax, transformers) greedy continuations of each prompt; ``stops`` empty: no EOS stop.

    transformers side: ``generate`` with the stop ids; without them, a plain greedy loop over the
    model's KV cache (``generate`` falls back to the folder's generation_config EOS when given none).
    """
    ours = generate(model, prompts, max_new_tokens=NEW_TOKENS, eos_ids=stops, pad_id=tok.pad_token_id)
    pairs = []
    for prompt, got in zip(prompts, ours, strict=True):
        t = torch.tensor([prompt])
        with torch.no_grad():
            if stops:
                theirs = hf.generate(t, attention_mask=torch.ones_like(t), do_sample=False,
                                     max_new_tokens=NEW_TOKENS, eos_token_id=stops,
                                     pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
            else:
                theirs, past, step = [], None, t
                for _ in range(NEW_TOKENS):
                    out = hf(input_ids=step, past_key_values=past, use_cache=True)
                    past, step = out.past_key_values, out.logits[:, -1:, :valid].argmax(-1)  # as ours: no pad rows
                    theirs.append(int(step))
        pairs.append((list(got), theirs))
    return pairs
