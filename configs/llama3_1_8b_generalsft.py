"""GeneralSFT baseline for Llama-3.1-8B-Instruct: the BehaviorSFT recipe with behavior tokens off."""

from bsft_jax.setup.config import load_config_file


def get_config():
    c = load_config_file(__file__, "llama3_1_8b_behaviorsft.py")
    c.run_dir = "runs/llama3_1_8b_generalsft"
    c.behavior.enabled = False
    c.data.style = "general_sft"
    return c
