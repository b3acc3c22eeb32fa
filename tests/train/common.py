"""Shared pieces of the training tests: a tiny ChatML tokenizer and a tiny synthetic-data config."""

from __future__ import annotations

import os

from bsft_jax.setup.config import default_config

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer(folder: str, words: int = 60) -> str:
    """A word-level HF tokenizer with ChatML specials (ids 0..words-1 are plain words); returns the folder."""
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return folder
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(words)}
    vocab["<unk>"] = words
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return folder


def tiny_config(run_dir: str, tokenizer_dir: str, **overrides):
    """Synthetic copy-task data, a 2-layer Qwen2-style model from scratch, fp32, checkpoints every 2 steps."""
    c = default_config()
    c.run_dir = run_dir
    c.model.source = "scratch"
    c.model.dtype = "float32"
    c.model.arch.update(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, tie_word_embeddings=False)
    c.model.vocab_pad_multiple = 16
    c.tokenizer.path = tiny_tokenizer(tokenizer_dir)
    c.data.source = "synthetic"
    c.data.seq_len = 32
    c.data.synthetic_vocab = 60
    c.data.eval_batches = 2
    c.train.steps = 6
    c.train.global_batch_size = 8
    c.train.log_every = 2
    c.train.eval_every = -1
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 2
    c.mesh.update(data=1, fsdp=1, tensor=1)
    c.checkpoint.every_steps = 2
    c.checkpoint.async_save = True
    c.logging.tensorboard = False
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c
