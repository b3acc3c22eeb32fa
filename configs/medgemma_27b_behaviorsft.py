"""BehaviorSFT of MedGemma 27B (text-only, Gemma 3 architecture) on BehaviorBench.

    python -m bsft_jax.train --config configs/medgemma_27b_behaviorsft.py \\
        --config.model.hf_path=/models/medgemma-27b-text-it --config.data.path=/data/behaviorbench
    python -m bsft_jax.train --config configs/medgemma_27b_behaviorsft.py --plan --plan_target=v5p-64

The Qwen2.5-7B recipe (configs/qwen2_5_7b_behaviorsft.py) with the MedGemma folder and a lower
learning rate; everything else (bf16 compute, fp32 master weights and AdamW, full remat, FSDP over
all devices, 64 x 2048-token batches in 2 microbatches) is the same. The weights are under the
Health AI Developer Foundations terms of use
(https://developers.google.com/health-ai-developer-foundations/terms), not the Gemma terms.
62 layers (5 sliding-window layers of 1024 tokens per global one), 262,144-row tied vocabulary: the
behavior tokens grow it to 262,272 rows (a multiple of 128).
"""

import os

from bsft_jax.setup.config import load_config_file


def get_config():
    c = load_config_file(__file__, "qwen2_5_7b_behaviorsft.py")
    c.run_dir = "runs/medgemma_27b_behaviorsft"
    c.model.hf_path = os.environ.get("BSFT_MEDGEMMA_27B", "models/medgemma-27b-text-it")
    c.optimizer.learning_rate = 5e-6
    return c
