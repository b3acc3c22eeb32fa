"""BehaviorSFT of Llama-3.1-8B-Instruct on BehaviorBench: the Qwen2.5-7B recipe with another model.

    python -m bsft_jax.train --config configs/llama3_1_8b_behaviorsft.py \\
        --config.model.hf_path=/models/Llama-3.1-8B-Instruct --config.data.path=/data/behaviorbench

Llama 3's 128,256 embedding rows are all tokens (its reserved special tokens included), so the
behavior tokens grow the table to the next multiple of model.vocab_pad_multiple (the padding
rows are masked in the loss and in sampling). Chat template: Llama 3 headers, end of turn <|eot_id|>.
"""

import os

from bsft_jax.setup.config import load_config_file


def get_config():
    c = load_config_file(__file__, "qwen2_5_7b_behaviorsft.py")
    c.run_dir = "runs/llama3_1_8b_behaviorsft"
    c.model.hf_path = os.environ.get("BSFT_LLAMA3_1_8B", "models/Llama-3.1-8B-Instruct")
    return c
