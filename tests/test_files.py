"""The one cache folder: BSFT_JAX_CACHE, then the deprecated BSFT_CACHE, then ~/.cache/bsft_jax."""

from __future__ import annotations

import os

from bsft_jax.data.demo import default_cache_dir
from bsft_jax.files import cache_dir
from bsft_jax.models.builtin import cache_root


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BSFT_JAX_CACHE", raising=False)
    monkeypatch.delenv("BSFT_CACHE", raising=False)
    assert cache_dir() == os.path.join(str(tmp_path / "home"), ".cache", "bsft_jax")
    monkeypatch.setenv("BSFT_CACHE", "/old")  # the deprecated alias, read only when BSFT_JAX_CACHE is unset
    assert cache_dir() == "/old"
    monkeypatch.setenv("BSFT_JAX_CACHE", "")  # empty counts as unset
    assert cache_dir() == "/old"
    monkeypatch.setenv("BSFT_JAX_CACHE", "/new")
    assert cache_dir() == "/new"
    # every user of the cache reads the same folder
    assert default_cache_dir() == cache_root() == "/new"
