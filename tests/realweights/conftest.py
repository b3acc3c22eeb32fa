"""Session fixtures: each built-in model is converted once per session (and cached across sessions).

A missing package is a failure: ``make install`` installs them. The one allowed skip is when the
package index cannot be reached at all (so the set-up could not have installed them); it is loud
and counted in the terminal summary.
"""

from __future__ import annotations

import os
import socket

import pytest

from bsft_jax.models import builtin

_SKIPPED: list[str] = []


def _index_reachable(host: str = "pypi.org", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def converted(name: str, dtype: str = "float32") -> str:
    """The converted folder of ``name``; fails (or, with no package index, loudly skips) if unavailable."""
    try:
        builtin.source_files(name)
    except builtin.BuiltinModelError as e:
        if not _index_reachable():
            msg = f"REAL-WEIGHTS TEST SKIPPED: {e} (and the package index is unreachable)"
            _SKIPPED.append(msg)
            pytest.skip(msg)
        pytest.fail(f"{e} (make install should have installed it)")
    return builtin.builtin_model_path(name, dtype=dtype)


def pytest_terminal_summary(terminalreporter):
    if _SKIPPED:
        terminalreporter.section("real-weights tests skipped (package index unreachable)", red=True)
        for msg in sorted(set(_SKIPPED)):
            terminalreporter.line(f"{_SKIPPED.count(msg)} x {msg}")


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    return converted("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def qwen_dir() -> str:
    return converted("qwen2.5-coder-0.5b-instruct")




@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
