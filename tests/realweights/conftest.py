"""Real-weights tests: the fixtures and the skip policy live in tests/realweights/policy.py (a plugin
tests/conftest.py loads, so tests elsewhere use the same fixtures and policy)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
