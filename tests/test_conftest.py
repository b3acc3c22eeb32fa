"""The session set-up of tests/conftest.py: one JAX persistent compilation cache for this process and its
children (tests/compilation_cache.py), and the units pytest-xdist hands to a worker."""

from __future__ import annotations

import os
import random

import jax
import jax.numpy as jnp
import pytest

from tests import compilation_cache
from tests.conftest import xdist_scope


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


def test_a_file_or_a_folder_sharing_a_session_fixture_stays_on_one_xdist_worker():
    assert xdist_scope("tests/run/test_checkpoint.py::test_crash[a-b]") == "tests/run/test_checkpoint.py"
    assert xdist_scope("tests/test_docs.py::test_links") == "tests/test_docs.py"
    assert xdist_scope("tests/serve/test_server.py::test_x") == xdist_scope("tests/serve/test_cli.py::test_y") == \
        "tests/serve/"
    assert xdist_scope("tests/realweights/test_parity.py::test_z[smollm2]") == "tests/realweights/"
