"""The one cache folder (BSFT_JAX_CACHE, then the deprecated BSFT_CACHE, then ~/.cache/bsft_jax); staged folders."""

from __future__ import annotations

import os

import pytest

from bsft_jax.data.demo import default_cache_dir
from bsft_jax.files import cache_dir, staged_dir
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


def test_staged_dir_appears_whole_or_not_at_all(tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    with open(os.path.join(out, "old.txt"), "w") as f:
        f.write("old")
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        with open(os.path.join(tmp, "new.txt"), "w") as f:
            f.write("new")
        raise RuntimeError("killed half way")
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == ["old.txt"]  # no staging folder left
    with staged_dir(out) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and os.path.basename(tmp).startswith(".out.partial-")
        with open(os.path.join(tmp, "new.txt"), "w") as f:
            f.write("new")
        assert os.listdir(out) == ["old.txt"]  # the old folder stays until the new one is complete
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == ["new.txt"]
