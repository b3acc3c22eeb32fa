"""The embedded default: BehaviorSFT of a small Qwen2-architecture model from scratch on the demo set.

    python -m bsft_jax.train --config configs/demo.py            # ~7 min on 2 CPU cores

Data: the generated clinical-scene demo set (bsft_jax.data.demo, cached on first use) and its small
BPE tokenizer, extended with the behavior tokens by the same code as a real checkpoint's tokenizer.
Everything runs in fp32 (bf16 matmuls are slow on CPUs); the recipes for real models use bf16.
"""

from bsft_jax.config_schema import default_config


def get_config():
    c = default_config()
    c.run_dir = "runs/demo"
    c.seed = 0

    c.model.source = "scratch"
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.vocab_pad_multiple = 128
    c.model.scan_unroll = 4  # all 4 layers unrolled: ~13% faster CPU steps, same compile time (BENCHMARKS.md)
    c.model.arch.update(model_type="qwen2", hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
                        num_kv_heads=2, head_dim=32, rope_theta=10_000.0, tie_word_embeddings=True,
                        max_position_embeddings=1024)
    c.tokenizer.path = "demo"

    # The item-level behavior scheme: the token is the decision on each scene (answer / intervene /
    # hold), not a function of the category (README, "The demo benchmark"). behavior.scheme="group"
    # with behavior.names=("reactive", "balanced", "proactive") gives the paper-style group tokens.
    c.behavior.scheme = "item"
    c.behavior.names = ("answer", "intervene", "hold")

    c.data.source = "demo"
    c.data.style = "behavior_sft"
    c.data.seq_len = 256
    c.data.packing = True
    c.data.eval_split = "test"

    # 1000 steps (~4 passes over the 5,200 training scenes): at 300 the model picks the right behavior
    # token but its labels are near chance (overall macro-F1 ~50); at 1000 the balanced and proactive
    # labels are learned (~97-99 macro-F1). The reactive multiple-choice items stay hard at this size.
    c.train.steps = 1000
    c.train.global_batch_size = 16
    c.train.microbatches = 1
    c.train.log_every = 25
    c.train.eval_every = 0  # evaluate once, at the end

    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.min_lr_ratio = 0.1
    c.optimizer.weight_decay = 0.01
    c.optimizer.b2 = 0.98

    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.checkpoint.every_steps = 200
    c.checkpoint.keep = 2
    return c
