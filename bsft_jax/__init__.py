"""bsft_jax: BehaviorSFT (behavior-token fine-tuning of clinical LLM agents) in JAX / Flax NNX.

The public API is re-exported here lazily: ``import bsft_jax.data.schema`` does not import JAX.
"""

from bsft_jax._lazy import lazy_getattr

__version__ = "0.1.0"

_HOMES = {
    "BehaviorSpec": "bsft_jax.behavior.spec",
    "extend_tokenizer": "bsft_jax.behavior.tokenizer",
    "add_behavior_tokens": "bsft_jax.behavior.surgery",
    "extend_model_vocab": "bsft_jax.behavior.surgery",
    "Sampler": "bsft_jax.decode.sampler",
    "generate": "bsft_jax.decode.sampler",
    **{name: "bsft_jax.models" for name in (
        "Decoder", "DecoderConfig", "KVCache", "UnsupportedConfigError", "WeightLoadError", "abstract_decoder",
        "count_params", "init_decoder", "load_hf", "preset", "save_hf")},
}

__all__ = sorted(_HOMES)
__getattr__ = lazy_getattr(__name__, _HOMES)


def __dir__() -> list[str]:
    return [*globals(), *__all__]
