"""The old name of :mod:`bsft_jax.setup` and :mod:`bsft_jax.checkpoint`, kept only so that config files
written against it still load: ``from bsft_jax.run.config import default_config`` works and warns
(:mod:`bsft_jax.run.config`). Nothing in the repository imports it; new code imports
``bsft_jax.setup.config``."""
