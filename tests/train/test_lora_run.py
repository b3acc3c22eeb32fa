"""LoRA runs end to end: resume == uninterrupted, merged export == transformers, PEFT adapter == ours
(on the real SmolLM2 base: tests/realweights/test_lora_real.py).

Reference numerics in fp32: logits agree to <= 1e-4 (max abs) on the rows of real tokens.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from bsft_jax.checkpoint.read import load_params, read_meta
from bsft_jax.export import export_checkpoint
from bsft_jax.export.read import load_lora_step, run_settings
from bsft_jax.train.loop import run
from bsft_jax.train.lora import LoraTrainer
from bsft_jax.train.step import TrainState
from tests.helpers import save_tiny
from tests.train.common import tiny_config

TOL = 1e-4


class _Crash(RuntimeError):
    pass


def _trainable(run_dir: str, step: int | None = None):
    meta = read_meta(run_dir, step)
    return load_lora_step(run_dir, meta["step"], meta, run_settings(run_dir, meta["step"])), meta


def test_lora_resume_mid_way_equals_uninterrupted_run(tmp_path):
    tok = str(tmp_path / "tok")
    over = {"train.steps": 6, "model.lora.rank": 4, "model.lora.dropout": 0.1, "optimizer.learning_rate": 1e-2}
    full = tiny_config(str(tmp_path / "full"), tok, **over)
    run(full, devices=jax.devices()[:1])
    broken = tiny_config(str(tmp_path / "broken"), tok, **over)

    def crash(step, _metrics):
        if step == 3:  # checkpoint at 2; step 3 is lost and redone
            raise _Crash

    with pytest.raises(_Crash):
        run(broken, devices=jax.devices()[:1], on_step=crash)
    resumed = run(broken, devices=jax.devices()[:1])
    assert resumed.start_step == 2 and resumed.final_step == 6
    (_, _, ref), meta = _trainable(full.run_dir)
    (_, _, got), _ = _trainable(broken.run_dir)
    assert sorted(ref) == sorted(got)
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=str(key))
    # the checkpoint holds the trainable state only, plus the base reference
    assert meta["lora"]["base"]["source"] == "scratch" and len(meta["lora"]["base"]["sha256"]) == 64
    params_dir = os.path.join(full.run_dir, "checkpoints", "6", "params")
    saved = json.load(open(os.path.join(params_dir, "_METADATA")))["tree_metadata"]
    assert all(("lora" in k) or ("rows" in k) for k in saved), list(saved)[:5]


def test_lora_resume_refuses_another_base(tmp_path):
    from bsft_jax.checkpoint.layout import CheckpointError

    tok = str(tmp_path / "tok")
    cfg = tiny_config(str(tmp_path / "run"), tok, **{"train.steps": 2, "model.lora.rank": 2})
    run(cfg, devices=jax.devices()[:1])
    cfg.seed = 1  # a different random base than the one the adapters were trained on
    cfg.train.steps = 4
    with pytest.raises(CheckpointError, match="LoRA base does not match"):
        run(cfg, devices=jax.devices()[:1])


def _hf_run(tmp_path, kind: str, tie: bool):
    from bsft_jax.data import generate_split, write_jsonl

    folder, _ = save_tiny(tmp_path, kind, tie=tie)
    data = tmp_path / "bb"
    data.mkdir()
    write_jsonl(generate_split("train", 24, seed=1), str(data / "train.jsonl"))
    write_jsonl(generate_split("test", 8, seed=2), str(data / "test.jsonl"))
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"), **{
        "model.source": "hf", "model.hf_path": folder, "data.source": "jsonl", "data.path": str(data),
        "data.seq_len": 96, "train.steps": 3, "checkpoint.every_steps": 3, "optimizer.learning_rate": 2e-2,
        "optimizer.warmup_steps": 0, "model.lora.rank": 4, "model.lora.alpha": 8.0,
        "model.lora.targets": "q,k,v,o,gate,up,down", "train.eval_every": 0, "data.eval_batches": 1})
    result = run(cfg, devices=jax.devices()[:1])
    assert np.isfinite(result.eval_metrics["loss"])  # the LoRA eval step (base passed to it) ran
    return cfg, folder


def _our_logits(run_dir: str, ids: np.ndarray) -> np.ndarray:
    """Logits of the unmerged LoRA model (frozen base + adapters + rows) from the checkpoint."""
    (bundle, lora, trainable), meta = _trainable(run_dir)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    import optax

    with jax.set_mesh(mesh):
        trainer = LoraTrainer(bundle.config, optax.identity(), lambda s: 0.0, mesh, lora=lora,
                              behavior_ids=meta["lora"]["row_ids"])
        trainer.set_base(bundle.model)
        params = jax.tree.map(jax.numpy.asarray, traverse_util.unflatten_dict(trainable))
        model = trainer.model_from_state(TrainState(params=params, opt_state=None, step=None, rng=None))
        return np.asarray(model(jax.numpy.asarray(ids))), meta


@pytest.mark.parametrize("kind, tie", [("qwen2", False), ("llama", True)])
def test_lora_exports_merged_and_peft_adapter_with_our_logits(tmp_path, kind, tie):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, folder = _hf_run(tmp_path, kind, tie)
    rows = sorted(read_meta(cfg.run_dir)["lora"]["row_ids"])
    ids = np.array([[3, rows[0], 5, 7, rows[2], 11, 2, 1], [rows[1], 9, 8, 4, 6, rows[0], 12, 0]])
    ours, meta = _our_logits(cfg.run_dir, ids)
    valid = meta["model_config"]["valid_vocab_size"] or meta["model_config"]["vocab_size"]
    (_, _, trainable), _ = _trainable(cfg.run_dir)
    assert np.abs(trainable[("lora", "layers", "mlp", "down_lora_b")]).max() > 0  # adapters really trained

    # what the evaluator and decoder load: the merged model, placed on a device
    model, _, _ = load_params(cfg.run_dir)
    np.testing.assert_allclose(np.asarray(model(jax.numpy.asarray(ids)))[..., :valid], ours[..., :valid], atol=TOL,
                               rtol=0)

    merged = export_checkpoint(cfg.run_dir, str(tmp_path / "merged"), dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(got[..., :valid], ours[..., :valid], atol=TOL, rtol=0)

    adapter = export_checkpoint(cfg.run_dir, str(tmp_path / "adapter"), dtype="float32", adapter=True)
    assert sorted(os.listdir(adapter))[:2] == ["adapter_config.json", "adapter_model.safetensors"]
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        got = peft_model(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(got[..., :valid], ours[..., :valid], atol=TOL, rtol=0)
    # and the adapter is not a no-op: the plain base gives other logits
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()(torch.tensor(ids)).logits
    assert np.abs(plain.numpy()[..., :valid] - ours[..., :valid]).max() > 10 * TOL


def test_lora_export_skips_a_damaged_newest_step(tmp_path, caplog):
    """A LoRA run whose newest step has a truncated adapter file: export falls back to the previous step
    with a warning naming the damaged one (as for full checkpoints); ``step=`` of the damaged step is
    one CheckpointError offering the others; nothing is written for it."""
    import glob

    from bsft_jax.checkpoint.layout import CheckpointError

    folder, _ = save_tiny(tmp_path, "qwen2", tie=False)
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"), **{
        "model.source": "hf", "model.hf_path": folder, "data.seq_len": 64, "train.steps": 4,
        "checkpoint.every_steps": 2, "checkpoint.keep": 2, "model.lora.rank": 4, "model.lora.alpha": 8.0,
        "train.eval_every": -1, "optimizer.learning_rate": 2e-2, "optimizer.warmup_steps": 0})
    run(cfg, devices=jax.devices()[:1])
    files = glob.glob(os.path.join(cfg.run_dir, "checkpoints", "4", "params", "**", "d", "*"), recursive=True)
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)

    with caplog.at_level("WARNING"):
        out = export_checkpoint(cfg.run_dir, str(tmp_path / "merged"), dtype="float32")
    assert "newer step(s) [4] cannot be restored" in caplog.text and "using step 2" in caplog.text
    assert os.path.isfile(os.path.join(out, "config.json"))
    adapter = export_checkpoint(cfg.run_dir, str(tmp_path / "adapter"), adapter=True)
    assert os.path.isfile(os.path.join(adapter, "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"step 4 cannot be restored .*available: \[2\]"):
        export_checkpoint(cfg.run_dir, str(tmp_path / "bad"), step=4)
    assert not os.path.exists(tmp_path / "bad")
