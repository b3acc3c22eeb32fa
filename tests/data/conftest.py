"""Shared fixtures: a small demo set and its tokenizer (built once per test session)."""

import pytest

from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.behavior.tokenizer import extend_tokenizer
from bsft_jax.data import demo


@pytest.fixture(scope="session")
def demo_records():
    """A small demo set (13 categories x 20 train, x 4 test)."""
    return demo.generate_demo(demo.DemoConfig(num_train=260, num_validation=26, num_test=52, seed=1))


@pytest.fixture(scope="session")
def demo_tokenizer_path(tmp_path_factory, demo_records):
    out = tmp_path_factory.mktemp("demo_tok") / "tokenizer"
    demo.build_demo_tokenizer(demo.tokenizer_corpus(demo_records["train"]), str(out), vocab_size=2048)
    return str(out)


@pytest.fixture()
def demo_tok(demo_tokenizer_path):
    """A fresh demo tokenizer with the behavior tokens added (as the trainer does)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_tokenizer_path)
    extend_tokenizer(tok, BehaviorSpec())
    return tok
