"""GeneralSFT baseline for Qwen2.5-7B-Instruct: the BehaviorSFT recipe with behavior tokens off.

Same data, steps and optimizer; the assistant turn is the reply alone (data.style="general_sft"),
so the comparison isolates the behavior token.
"""

from bsft_jax.setup.config import load_config_file


def get_config():
    c = load_config_file(__file__, "qwen2_5_7b_behaviorsft.py")
    c.run_dir = "runs/qwen2_5_7b_generalsft"
    c.behavior.enabled = False
    c.data.style = "general_sft"
    return c
