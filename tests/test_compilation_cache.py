"""The test session compiles through one JAX persistent compilation cache (tests/compilation_cache.py):
this process writes there, and its children are pointed at the same folder."""

from __future__ import annotations

import os
import random

import jax
import jax.numpy as jnp
import pytest

from tests import compilation_cache


def test_this_process_and_its_children_share_the_sessions_cache():
    if os.environ.get(compilation_cache.NO_CACHE_VAR) == "1":
        pytest.skip(f"{compilation_cache.NO_CACHE_VAR}=1: the cache is off for this session")
    folder = jax.config.jax_compilation_cache_dir
    assert folder and folder == os.environ["JAX_COMPILATION_CACHE_DIR"] and os.path.isdir(folder)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == compilation_cache.MIN_COMPILE_SECONDS
    before = set(os.listdir(folder))
    scale = random.random()  # a program no earlier test (or session, in a lasting folder) compiled
    jax.jit(lambda x: x * scale + 1.0).lower(jnp.ones(3)).compile()
    assert set(os.listdir(folder)) - before, "the compile was not written to the session's cache"
