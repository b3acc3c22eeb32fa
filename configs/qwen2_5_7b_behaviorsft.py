"""BehaviorSFT of Qwen2.5-7B-Instruct on BehaviorBench (the paper's main recipe).

    python -m bsft_jax.train --config configs/qwen2_5_7b_behaviorsft.py \\
        --config.model.hf_path=/models/Qwen2.5-7B-Instruct --config.data.path=/data/behaviorbench

Run the same command on every host of a TPU slice (launch/ has the pod and SLURM launchers).
Model: a local Hugging Face folder (never downloaded by bsft_jax); its tokenizer is extended with
the behavior tokens, whose embedding rows reuse Qwen's spare rows (152,064 rows > 151,665 tokens).
Data: BehaviorBench JSONL (data.path/train.jsonl, test.jsonl; data.field_map renames foreign
fields), or data.source="tfds" with data.path the TFDS data_dir, or data.source="demo".
Numerics: bf16 compute, fp32 master weights and AdamW state, full rematerialisation per block.
Sharding: FSDP over all devices by default (mesh.fsdp=-1); add tensor parallelism with
--config.mesh.tensor=4 --config.mesh.fsdp=-1 when the per-device batch gets small.
"""

import os

from bsft_jax.setup.config import default_config


def get_config():
    c = default_config()  # only what differs from the defaults is set here
    c.run_dir = "runs/qwen2_5_7b_behaviorsft"
    c.model.hf_path = os.environ.get("BSFT_QWEN2_5_7B", "models/Qwen2.5-7B-Instruct")
    c.model.remat = "full"

    c.data.source = "jsonl"
    c.data.path = os.environ.get("BSFT_BEHAVIORBENCH", "data/behaviorbench")
    c.data.seq_len = 2048

    # ~3 epochs of a BehaviorBench-sized train split (tune steps to your data: steps = epochs *
    # train tokens / (global_batch_size * seq_len * packing fill)).
    c.train.steps = 1500
    c.train.global_batch_size = 64
    c.train.microbatches = 2
    c.train.eval_every = 500

    c.optimizer.warmup_steps = 50
    c.optimizer.weight_decay = 0.01
    c.checkpoint.every_steps = 250
    return c
