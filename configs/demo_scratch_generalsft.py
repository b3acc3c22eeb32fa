"""GeneralSFT counterpart of the from-scratch demo (no behavior tokens): the scratch BehaviorSFT-vs-GeneralSFT pair."""

from bsft_jax.setup.config import load_config_file


def get_config():
    c = load_config_file(__file__, "demo_scratch.py")
    c.run_dir = "runs/demo_scratch_generalsft"
    c.behavior.enabled = False
    c.data.style = "general_sft"
    return c
