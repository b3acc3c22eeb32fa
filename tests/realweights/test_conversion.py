"""Our numpy GGUF conversion against transformers' own GGUF loader (an independent implementation)."""

from __future__ import annotations

import os

import torch

from bsft_jax.models import builtin

from .common import hf_model


def test_smollm2_conversion_is_bit_identical_to_transformers_gguf_loader(smollm2_dir):
    from transformers import AutoModelForCausalLM

    (gguf,) = builtin.source_files("smollm2-135m-instruct")
    reference = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                     dtype=torch.float32).state_dict()
    ours = hf_model(smollm2_dir).state_dict()
    assert set(ours) == set(reference)
    differ = [k for k in reference if not torch.equal(reference[k], ours[k])]
    assert not differ, differ[:5]  # includes every q_proj / k_proj: llama.cpp's permutation is undone exactly
