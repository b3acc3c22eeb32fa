"""bsft_jax: BehaviorSFT (behavior-token fine-tuning of clinical LLM agents) in JAX / Flax NNX."""

from bsft_jax.behavior import BehaviorSpec, add_behavior_tokens, extend_model_vocab, extend_tokenizer
from bsft_jax.decode import Sampler, generate
from bsft_jax.models import (
    Decoder,
    DecoderConfig,
    KVCache,
    UnsupportedConfigError,
    WeightLoadError,
    abstract_decoder,
    count_params,
    init_decoder,
    load_hf,
    preset,
    save_hf,
)

__version__ = "0.1.0"

__all__ = [
    "BehaviorSpec", "Decoder", "DecoderConfig", "KVCache", "Sampler", "UnsupportedConfigError", "WeightLoadError",
    "abstract_decoder", "add_behavior_tokens", "count_params", "extend_model_vocab", "extend_tokenizer",
    "generate", "init_decoder", "load_hf", "preset", "save_hf",
]
