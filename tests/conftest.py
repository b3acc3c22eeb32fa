"""Test set-up: 8 fake CPU devices (sharding tests), no Hub access, GPU tests opt-in, the two tiers, one
JAX compilation cache for the session (tests/compilation_cache.py).

The tiers (tests/tiers.py): a test under tests/integration, tests/multihost or tests/realweights is
marked ``slow`` by its path, so ``pytest -m "not slow"`` (``make test-fast``) runs the in-process rest.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax

# Must happen before any backend starts; every test sees 8 CPU devices, default device 0.
jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

from tests import compilation_cache, tiers  # noqa: E402

# pytester: tests/test_tiers.py runs a planted suite through these hooks.
pytest_plugins = ["pytester"]

_GPU_REASON = "GPU test: set BSFT_GPU_TESTS=1 on a GPU machine"
_GPU_SKIPPED: list[str] = []
_CACHE: list[tuple[str | None, bool]] = []


def pytest_configure(config):
    # One JAX compilation cache for this process and every subprocess of the session, set before the
    # first compile: a program one test (or child) compiled, the next one reads back.
    _CACHE.append(compilation_cache.start())
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        # The pytest-xdist controller: it collects nothing, so it never loads tests/realweights/conftest.py, but
        # it prints the summary, so it takes the real-weights reports (skips, measured numbers) here.
        config.pluginmanager.import_plugin("tests.realweights.policy")


def pytest_unconfigure(config):
    for folder, made in _CACHE:
        compilation_cache.stop(folder, made)
    _CACHE.clear()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    tiers.mark_slow(items, os.path.dirname(os.path.abspath(__file__)))
    if os.environ.get("BSFT_GPU_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason=_GPU_REASON)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    """Names the GPU tests skipped: from their reports, which reach the process that prints the summary
    (under pytest-xdist only the workers collect)."""
    if report.skipped and report.when == "setup" and _GPU_REASON in str(report.longrepr):
        _GPU_SKIPPED.append(report.nodeid)


# pytest-xdist (`make test` runs `-n 2`): the tests of one file run on one worker, so a module fixture is
# built once; so do those of a folder whose files share an expensive session fixture.
ONE_WORKER_FOLDERS = {
    "serve": "the trained toy run and its server (tests/serve/conftest.py)",
    "realweights": "the converted real models, GBs of memory each",
    "multihost": "each test starts several JAX processes on two cores",
}


def xdist_scope(nodeid: str) -> str:
    """The unit pytest-xdist hands to one worker: the test's file, or its folder in :data:`ONE_WORKER_FOLDERS`."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    return f"tests/{parts[1]}/" if parts[0] == "tests" and len(parts) > 2 and parts[1] in ONE_WORKER_FOLDERS else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return Scheduling(config, log)


def _guard(item):
    """A fast test that starts a Python interpreter (itself or through library code) fails."""
    if item.get_closest_marker("slow") is not None:
        return None
    return tiers.python_launches()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _guarded(item))


def _guarded(item):
    guard = _guard(item)
    if guard is None:
        return (yield)
    with guard as launched:
        result = yield
    if launched:
        pytest.fail(f"a fast-tier test started {len(launched)} Python process(es): {launched[:3]}; "
                    f"move it under {', '.join('tests/' + d for d in tiers.SLOW_DIRS)} (tests/tiers.py)",
                    pytrace=False)
    return result


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
