"""Decoding: ``sampling`` (next-token choice), ``loop`` (jitted prefill + while_loop), ``batching``
(buckets and placement, shared with ``scoring``), ``sampler`` (:class:`Sampler`, :func:`generate`)."""

from bsft_jax.decode.loop import DecodeState, decode_loop, prefill
from bsft_jax.decode.sampler import Sampler, SamplerOutput, generate
from bsft_jax.decode.sampling import SamplingParams, sample_logits

__all__ = ["DecodeState", "Sampler", "SamplerOutput", "SamplingParams", "decode_loop", "generate", "prefill",
           "sample_logits"]
