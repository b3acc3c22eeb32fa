"""A toy-size demo recipe for end-to-end tests: the from-scratch demo shrunk to seconds."""

from __future__ import annotations

import os

from bsft_jax.setup.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_demo_config(run_dir: str, recipe: str = "demo_scratch.py", *, steps: int = 6):
    """``configs/<recipe>`` with a tiny model, a few hundred demo scenes, ``steps`` steps, evaluations every 2."""
    c = load_config_file(os.path.join(ROOT, "configs", recipe), recipe)
    c.run_dir = run_dir
    c.model.arch.update(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                        max_position_embeddings=1024)
    c.model.scan_unroll = 1
    c.data.demo.update(num_train=130, num_validation=26, num_test=26, tokenizer_vocab=400)
    c.data.seq_len = 256
    c.data.eval_batches = 1
    c.train.update(steps=steps, global_batch_size=8, log_every=2, eval_every=2, steer_eval_items=6,
                   steer_max_new_tokens=6)
    c.optimizer.warmup_steps = 1
    c.checkpoint.update(every_steps=2, keep=1, async_save=False)
    c.logging.tensorboard = False
    c.mesh.update(data=1, fsdp=-1, tensor=1)  # every device the test process has
    return c
