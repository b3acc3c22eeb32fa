"""Test set-up: 8 fake CPU devices (sharding tests), no Hub access, GPU tests opt-in."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax

# Must happen before any backend starts; every test sees 8 CPU devices, default device 0.
jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

_GPU_SKIPPED: list[str] = []

# The built-in real-weights fixtures (smollm2_dir, qwen_dir) and their skip policy, for every test.
pytest_plugins = ["tests.realweights.policy"]


def pytest_collection_modifyitems(config, items):
    if os.environ.get("BSFT_GPU_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="GPU test: set BSFT_GPU_TESTS=1 on a GPU machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
            _GPU_SKIPPED.append(item.nodeid)


def pytest_terminal_summary(terminalreporter):
    """Skipped GPU tests get their own section: what they check (cuDNN paths) did not run here."""
    if _GPU_SKIPPED:
        terminalreporter.section(f"{len(_GPU_SKIPPED)} GPU TEST(S) NOT RUN (set BSFT_GPU_TESTS=1 on a GPU machine)",
                                 yellow=True)
        for nodeid in _GPU_SKIPPED:
            terminalreporter.line(f"NOT RUN: {nodeid}")


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory):
    """One BSFT_JAX_CACHE for the toy end-to-end tests (the demo set and tokenizer are built once)."""
    return str(tmp_path_factory.mktemp("toy_cache"))
