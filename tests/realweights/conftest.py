"""Real-weights tests: the fixtures (``smollm2_dir``, ``qwen_dir``) and the skip policy live in
tests/realweights/policy.py; importing them here loads them for the tests of this folder only (every
test that needs real weights lives here)."""

from __future__ import annotations

import os

import pytest

from tests.realweights.policy import (  # noqa: F401  (fixtures and hooks of this folder)
    pytest_runtest_logreport,
    pytest_runtest_makereport,
    pytest_terminal_summary,
    qwen_dir,
    smollm2_dir,
)


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
