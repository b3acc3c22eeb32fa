"""The embedded default: BehaviorSFT of a small Qwen2-architecture model from scratch on the demo set.

    python -m bsft_jax.train --config configs/demo.py            # ~7 min on 2 CPU cores

Data: the generated clinical-scene demo set (bsft_jax.data.demo, cached on first use) and its small
BPE tokenizer, extended with the behavior tokens by the same code as a real checkpoint's tokenizer.
Everything runs in fp32 (bf16 matmuls are slow on CPUs); the recipes for real models use bf16.
"""

from bsft_jax.setup.config import default_config


def get_config():
    c = default_config()  # only what differs from the defaults is set here
    c.run_dir = "runs/demo_scratch"
    c.model.source = "scratch"
    c.model.dtype = "float32"
    c.model.scan_unroll = 4  # all 4 layers unrolled: ~13% faster CPU steps, same compile time (BENCHMARKS.md)
    c.model.arch.update(hidden_size=128, intermediate_size=384, head_dim=32, max_position_embeddings=1024)
    c.tokenizer.path = "demo"

    # The item-level behavior scheme: the token is the decision on each scene (answer / intervene /
    # hold), not a function of the category (docs/data.md, "The demo benchmark"). behavior.scheme="group"
    # with behavior.names=("reactive", "balanced", "proactive") gives the paper-style group tokens.
    c.behavior.scheme = "item"
    c.behavior.names = ("answer", "intervene", "hold")

    # 1000 steps (~4 passes over the 5,200 training scenes): at 300 the model picks the right behavior
    # token but its labels are near chance (overall macro-F1 ~50); at 1000 the balanced and proactive
    # labels are learned (~97-99 macro-F1). The reactive multiple-choice items stay hard at this size.
    c.train.global_batch_size = 16
    c.train.log_every = 25

    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.weight_decay = 0.01
    c.optimizer.b2 = 0.98

    c.checkpoint.every_steps = 200
    c.checkpoint.keep = 2
    return c
