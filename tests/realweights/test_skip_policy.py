"""The real-weights skip policy itself (no weights needed): loud, counted per test, and only when no
package source is reachable; a missing package with a reachable source fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from . import policy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFTEST = """
import pytest
from bsft_jax.models import builtin
from tests.realweights import policy

pytest_plugins = ["tests.realweights.policy"]
builtin.REGISTRY["fake"] = builtin.BuiltinModel(
    name="fake", requirements=("no-such-pkg==1.0",), no_deps=True, parts=(("no_such_pkg_xyz", "m.gguf"),),
    stop_tokens=("</s>",), sha256="0" * 64)
policy.index_urls = lambda: [{url!r}]


@pytest.fixture(scope="session")
def fake_dir():
    return policy.converted("fake")
"""

TESTS = """
def test_a(fake_dir): pass
def test_b(fake_dir): pass
def test_c(fake_dir): pass
def test_unrelated(): pass
"""


def _run(tmp_path, url: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST.format(url=url))
    (tmp_path / "test_fake.py").write_text(textwrap.dedent(TESTS))
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_unreachable_index_skips_every_test_loudly_and_counts_each(tmp_path):
    out = _run(tmp_path, "http://127.0.0.1:9/simple")  # port 9 (discard): nothing listens
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 real-weights tests SKIPPED (no package source reachable)" in out.stdout
    assert f"3 x {policy.SKIP_PREFIX}: built-in model 'fake' needs package(s)" in out.stdout
    for name in ("test_a", "test_b", "test_c"):
        assert f"test_fake.py::{name}" in out.stdout
    assert "1 passed, 3 skipped" in out.stdout


def test_reachable_index_with_a_missing_package_fails(tmp_path):
    out = _run(tmp_path, tmp_path.as_uri())  # a local source that exists: the set-up could have installed it
    assert out.returncode == 1
    assert "3 errors" in out.stdout or "3 error" in out.stdout, out.stdout
    assert "make install should have installed it" in out.stdout and "SKIPPED" not in out.stdout


@pytest.mark.parametrize("config, expected", [
    ("", [policy.DEFAULT_INDEX]),
    ("global.index-url='https://mirror.example/simple'\n:env:.extra-index-url='file:///a file:///b'\n"
     "global.find-links='/w'", ["https://mirror.example/simple", "file:///a", "file:///b", "/w"]),
    ("global.no-index='true'\nglobal.find-links='/w'", ["/w"]),
])
def test_index_urls_follow_pip_config(monkeypatch, config, expected):
    monkeypatch.setattr(policy.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=config, stderr=""))
    assert policy.index_urls() == expected


def test_reachable_local_and_remote(tmp_path):
    assert policy.reachable(tmp_path.as_uri()) and policy.reachable(str(tmp_path))
    assert not policy.reachable((tmp_path / "missing").as_uri())
    assert not policy.reachable("http://127.0.0.1:9/simple", timeout=1.0)


# The layout of this suite: the root conftest's hooks (tests/conftest.py) and a folder whose conftest loads the
# policy's hooks, as tests/realweights/conftest.py does.
_ROOT_HOOKS = "from tests.conftest import (pytest_collection_modifyitems, pytest_configure,  # noqa: F401\n" \
              "    pytest_runtest_logreport, pytest_terminal_summary, pytest_unconfigure)\n"
_FOLDER_HOOKS = CONFTEST.replace('pytest_plugins = ["tests.realweights.policy"]\n',
                                 "from tests.realweights.policy import (pytest_runtest_logreport,  # noqa: F401\n"
                                 "    pytest_runtest_makereport, pytest_terminal_summary)\n")
_MEASURING = """
import pytest
from tests.realweights.policy import report

def test_measures():
    report("measured: 42")

@pytest.mark.gpu
def test_on_gpu(): pass
"""


@pytest.mark.parametrize("workers", ["0", "2"])
def test_skips_measurements_and_gpu_tests_reach_the_summary_from_xdist_workers(tmp_path, workers):
    """Under pytest-xdist only the workers collect (and load a folder's conftest), but the controller prints the
    summary: the real-weights skips, the measured numbers and the GPU tests not run reach it all the same."""
    (tmp_path / "conftest.py").write_text(_ROOT_HOOKS)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "conftest.py").write_text(_FOLDER_HOOKS.format(url="http://127.0.0.1:9/simple"))
    (tmp_path / "weights" / "test_fake.py").write_text(textwrap.dedent(TESTS))
    (tmp_path / "weights" / "test_measures.py").write_text(_MEASURING)
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("BSFT_GPU_TESTS", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", workers,
                          str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 real-weights tests SKIPPED (no package source reachable)" in out.stdout, out.stdout
    assert "real-weights measurements" in out.stdout and "measured: 42" in out.stdout, out.stdout
    assert "1 GPU TEST(S) NOT RUN" in out.stdout and "NOT RUN: weights/test_measures.py::test_on_gpu" in out.stdout
    assert "2 passed, 4 skipped" in out.stdout, out.stdout
