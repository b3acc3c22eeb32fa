"""GeneralSFT counterpart of the demo (no behavior tokens), for the demo's BehaviorSFT-vs-GeneralSFT comparison."""

from bsft_jax.setup.config import load_config_file


def get_config():
    c = load_config_file(__file__, "demo.py")
    c.run_dir = "runs/demo_generalsft"
    c.behavior.enabled = False
    c.data.style = "general_sft"
    return c
