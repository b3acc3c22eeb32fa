"""The demo config through the CLI, shortened: loss falls, checkpoints are written, the run resumes."""

from __future__ import annotations

import json
import os

from bsft_jax.checkpoint.layout import decoder_config_from_dict
from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.checkpoint.read import read_meta
from bsft_jax.models.decoder import abstract_decoder, count_params
from tests.processes import cli

SHORT = ["--config", "configs/demo_scratch.py", "--config.train.global_batch_size=8", "--config.data.seq_len=128",
         "--config.optimizer.warmup_steps=3", "--config.checkpoint.every_steps=4", "--config.train.log_every=4",
         "--config.data.eval_batches=2"]


def _train_losses(run_dir: str) -> dict[int, float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if r["split"] == "train"}


def test_demo_config_learns_checkpoints_and_resumes(tmp_path):
    run_dir = str(tmp_path / "demo")
    first = cli(*SHORT, f"--config.run_dir={run_dir}", "--config.train.steps=12", timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    # the demo model with the behavior rows; the count follows the demo tokenizer's vocabulary (trained on
    # the demo data), so it is computed from the run's model_config.json rather than written here
    config = decoder_config_from_dict(json.load(open(os.path.join(run_dir, "model_config.json"))))
    assert config.hidden_size == 128 and config.num_layers == 4
    assert f"startup: {count_params(abstract_decoder(config)):,} parameters" in first.stderr
    assert "compiled train step, memory per device" in first.stderr
    assert "final eval at step 12" in first.stderr
    losses = _train_losses(run_dir)
    assert sorted(losses) == list(range(1, 13))
    assert sum(losses[s] for s in (10, 11, 12)) / 3 < 0.8 * losses[1]  # the loss falls
    assert Checkpointer(run_dir).all_steps() == [8, 12]  # keep=2 of 4, 8, 12
    meta = read_meta(run_dir)
    assert set(meta["behavior"]["token_ids"]) == {"answer", "intervene", "hold"}  # the item scheme
    for name in ("config.json", "model_config.json", "startup.json", "tokenizer/tokenizer.json",
                 "tokenizer/chat_template.jinja"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert os.listdir(os.path.join(run_dir, "tensorboard"))

    # a longer run of the same directory resumes at step 12 instead of starting over
    again = cli(*SHORT, f"--config.run_dir={run_dir}", "--config.train.steps=14", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr and "from step 12" in again.stderr
    assert sorted(_train_losses(run_dir)) == list(range(1, 15))
    assert Checkpointer(run_dir).all_steps() == [12, 14]
