"""Behavior tokens: the vocabulary BehaviorSFT is named after.

``spec`` (the token set as data) and ``taxonomy`` (the paper's categories and groups) are pure and
carry no JAX; ``tokenizer`` adds the tokens to an HF tokenizer; ``surgery`` grows a model's embedding
table and LM head for them (JAX), and is imported only when one of its names is used.
"""

from bsft_jax._lazy import lazy_getattr
from bsft_jax.behavior.spec import DEFAULT_BEHAVIORS, DEFAULT_TOKEN_FORMAT, BehaviorSpec
from bsft_jax.behavior.tokenizer import behavior_token_ids, extend_tokenizer

_SURGERY = ("add_behavior_tokens", "extend_model_vocab", "grow_embedding_table", "grown_vocab_size", "round_up")
__getattr__ = lazy_getattr(__name__, dict.fromkeys(_SURGERY, "bsft_jax.behavior.surgery"))

__all__ = ["DEFAULT_BEHAVIORS", "DEFAULT_TOKEN_FORMAT", "BehaviorSpec", "behavior_token_ids", "extend_tokenizer",
           *_SURGERY]
