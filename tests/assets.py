"""Real tokenizers for tests, built offline from registry packages (never the HF Hub).

* Qwen2 vocabulary: ``qwen.tiktoken`` shipped in the ``dashscope==2.0.2`` wheel, converted with
  transformers' TikTokenConverter (Qwen2 pre-tokenizer regex, NFC, the three ChatML specials).
* Llama 3 vocabulary: ``ggml-vocab-llama-bpe.gguf`` from the ``llama-cpp-python==0.3.36`` sdist.

Downloads happen once per checkout (``pip download`` into tests/.assets) and the converted
tokenizers are cached there as HF folders.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile

from filelock import FileLock

ASSETS = os.path.join(os.path.dirname(__file__), ".assets")
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 151643, 151644, 151645
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _pip_download(spec: str, *extra: str) -> str:
    os.makedirs(os.path.join(ASSETS, "dl"), exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *extra, "-d",
                    os.path.join(ASSETS, "dl"), spec], check=True)
    name = spec.split("==")[0].replace("-", "_").lower()
    for fn in os.listdir(os.path.join(ASSETS, "dl")):
        if fn.lower().replace("-", "_").startswith(name):
            return os.path.join(ASSETS, "dl", fn)
    raise FileNotFoundError(f"pip download {spec} produced no file")


def qwen_tiktoken_file() -> str:
    out = os.path.join(ASSETS, "qwen.tiktoken")
    if not os.path.isfile(out):
        wheel = _pip_download("dashscope==2.0.2", "--only-binary=:all:")
        with zipfile.ZipFile(wheel) as z, open(out + ".tmp", "wb") as f:
            f.write(z.read("dashscope/resources/qwen.tiktoken"))
        os.replace(out + ".tmp", out)
    return out


def llama3_gguf_file() -> str:
    out = os.path.join(ASSETS, "ggml-vocab-llama-bpe.gguf")
    if not os.path.isfile(out):
        sdist = _pip_download("llama-cpp-python==0.3.36", "--no-binary=:all:")
        with tarfile.open(sdist) as t:
            member = t.getmember("llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf")
            with t.extractfile(member) as src, open(out + ".tmp", "wb") as f:
                f.write(src.read())
        os.replace(out + ".tmp", out)
    return out


def qwen2_tokenizer_dir() -> str:
    """An HF tokenizer folder with the real Qwen2 vocabulary and a ChatML template."""
    out = os.path.join(ASSETS, "qwen2_tokenizer")
    os.makedirs(ASSETS, exist_ok=True)
    with FileLock(os.path.join(ASSETS, ".qwen2.lock")):
        if not os.path.isfile(os.path.join(out, "tokenizer.json")):
            from tokenizers import AddedToken, normalizers
            from transformers import PreTrainedTokenizerFast
            from transformers.convert_slow_tokenizer import TikTokenConverter

            backend = TikTokenConverter(vocab_file=qwen_tiktoken_file(), pattern=QWEN_PATTERN).converted()
            backend.normalizer = normalizers.NFC()
            backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])
            tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                          pad_token="<|endoftext|>")
            tok.chat_template = CHATML_TEMPLATE
            tok.save_pretrained(out + ".tmp")
            os.replace(out + ".tmp", out)
    return out


def llama3_tokenizer_dir() -> str:
    """An HF tokenizer folder with the Llama 3 vocabulary and a Llama 3 header chat template."""
    out = os.path.join(ASSETS, "llama3_tokenizer")
    os.makedirs(ASSETS, exist_ok=True)
    with FileLock(os.path.join(ASSETS, ".llama3.lock")):
        if not os.path.isfile(os.path.join(out, "tokenizer.json")):
            from transformers import AutoTokenizer

            gguf = llama3_gguf_file()
            tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
            tok.chat_template = LLAMA3_TEMPLATE
            tok.save_pretrained(out + ".tmp")
            os.replace(out + ".tmp", out)
    return out
