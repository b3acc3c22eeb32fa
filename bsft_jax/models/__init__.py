"""Model definitions and Hugging Face weight I/O."""

from bsft_jax.models.config import DecoderConfig, Llama3RopeScaling, UnsupportedConfigError, preset
from bsft_jax.models.decoder import Decoder, KVCache, abstract_decoder, count_params, init_decoder
from bsft_jax.models.hf import WeightLoadError, load_hf, save_hf

__all__ = [
    "Decoder", "DecoderConfig", "KVCache", "Llama3RopeScaling", "UnsupportedConfigError", "WeightLoadError",
    "abstract_decoder", "count_params", "init_decoder", "load_hf", "preset", "save_hf",
]
