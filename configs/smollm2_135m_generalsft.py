"""GeneralSFT counterpart of smollm2_135m_behaviorsft.py (same model and data, no behavior tokens)."""

from bsft_jax.setup.config import load_config_file


def get_config():
    c = load_config_file(__file__, "smollm2_135m_behaviorsft.py")
    c.run_dir = "runs/smollm2_135m_generalsft"
    c.behavior.enabled = False
    c.data.style = "general_sft"
    return c
