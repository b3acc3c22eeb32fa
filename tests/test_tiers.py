"""The tier rule (tests/tiers.py) holds for this tree, and its checks catch a planted breach.

* every test file under tests/integration, tests/multihost and tests/realweights is marked ``slow`` by
  the collection hook, every other one is not (so ``make test-fast`` leaves out exactly those folders);
* a fast-tier file neither starts a process nor imports a helper that does (read from the source, with
  an allow-list carrying reasons), and a fast-tier test that starts a Python interpreter anyway (say,
  through library code) fails when it runs.
"""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess
import sys
import textwrap

import pytest

from tests import tiers


def test_the_tree_keeps_the_tier_rule():
    problems = tiers.violations()
    assert not problems, "\n".join(problems)


def test_every_collected_test_carries_the_marker_of_its_folder(request):
    wrong = [item.nodeid for item in request.session.items
             if (item.get_closest_marker("slow") is not None) != tiers.is_slow(tiers.relpath(item.path))]
    assert not wrong, wrong


def test_allow_list_and_pending_moves_name_existing_files():
    for rel in [*tiers.ALLOWED, *tiers.PENDING_MOVE]:
        assert os.path.isfile(os.path.join(tiers.TESTS_DIR, rel)), rel
    assert all(reason.strip() for reason in [*tiers.ALLOWED.values(), *tiers.PENDING_MOVE.values()])


def _plant(root, files: dict[str, str]) -> None:
    for rel, body in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))


PLANTED = {
    "integration/test_new_cli.py": "def test_cli(): pass\n",
    "multihost/deep/test_two_hosts.py": "def test_two(): pass\n",
    "data/test_clean.py": "import os\n\ndef test_clean(): assert os.sep\n",
    "data/test_spawns.py": """
        import subprocess
        import sys

        def test_spawns():
            subprocess.run([sys.executable, "-c", "pass"], check=True)
        """,
    "models/test_pool.py": "from concurrent.futures import ProcessPoolExecutor\n",
    "decode/test_forks.py": "import os\n\ndef test_f():\n    os.fork()\n",
    "train/test_helper.py": "from tests.processes import cli\n",
    "train/test_relative_helper.py": "from ..integration.gcs_emulator import gcs_bucket\n",
    "serve/conftest.py": "import os\n\ndef server():\n    os.posix_spawnp('uvicorn', ['uvicorn'], {})\n",
    "data/test_execs.py": "from os import execvpe\n",
    "evaluate/test_pty.py": "import pty\n\ndef test_p():\n    pty.spawn('x')\n",
    "checkpoint/test_old_path.py": ("from tests.checkpoint.test_checkpoint import tiny\n"
                                    "from tests.train.test_sources import x\nfrom tests.run.test_lease import FAST\n"),
    "integration/test_old_emulator.py": "from tests.gcs_emulator import gcs_bucket\n",
}


def test_a_planted_breach_is_caught(tmp_path):
    _plant(tmp_path, PLANTED)
    found = tiers.violations(str(tmp_path), allowed={})
    by_file = {line.split(":", 1)[0] for line in found}
    assert by_file == {"data/test_spawns.py", "models/test_pool.py", "decode/test_forks.py", "train/test_helper.py",
                       "train/test_relative_helper.py", "serve/conftest.py", "data/test_execs.py",
                       "evaluate/test_pty.py", "checkpoint/test_old_path.py", "integration/test_old_emulator.py"}, found
    assert any("serve/conftest.py: line 4: os.posix_spawnp" in line for line in found)  # a new folder's conftest too
    # a test module imported by its path before the split is named with its new one, in either tier
    assert ("checkpoint/test_old_path.py: line 2: imports tests.train.test_sources, which moved: "
            "tests.setup.test_sources" in found), found
    assert ("checkpoint/test_old_path.py: line 3: imports tests.run.test_lease, which moved: "
            "tests.checkpoint.test_lease" in found), found  # tests/run/ split in two (issue 26)
    assert not any("imports tests.checkpoint.test_checkpoint" in line for line in found)  # its path now: fine
    assert any(line.startswith("integration/test_old_emulator.py: line 1: imports tests.gcs_emulator, which moved: "
                               "tests.integration.gcs_emulator") for line in found), found
    assert any("data/test_spawns.py: line 2: import subprocess" in line for line in found)
    assert any("sys.executable" in line for line in found)
    assert any("imports tests.integration.gcs_emulator" in line for line in found)
    # an allow-list entry (with its reason) lets a file through
    assert "data/test_spawns.py" not in {line.split(":", 1)[0] for line in tiers.violations(
        str(tmp_path), allowed={"data/test_spawns.py": "a reason"})}
    # a hook rule that forgot a slow folder leaves its files unmarked: caught
    forgot = tiers.violations(str(tmp_path), slow=lambda rel: rel.startswith("integration/"), allowed={})
    assert "multihost/deep/test_two_hosts.py: under a slow folder but not marked slow" in forgot, forgot
    never = tiers.violations(str(tmp_path), slow=lambda rel: False, allowed={})
    assert "integration/test_new_cli.py: under a slow folder but not marked slow" in never, never


def test_the_guard_records_python_starts_and_lets_other_programs_pass():
    with tiers.python_launches() as launched:
        for program in ("/nonexistent/python3", sys.executable + "-nonexistent", "/nonexistent/git"):
            with pytest.raises(FileNotFoundError):  # nothing starts: the path does not exist
                subprocess.Popen([program, "-c", "pass"])
        with pytest.raises(FileNotFoundError):
            subprocess.Popen(["/nonexistent/python3", "-m", "pip", "download", "x"])  # tests/assets.py's download
    assert launched == ["/nonexistent/python3 -c pass", f"{sys.executable}-nonexistent -c pass"], launched


class _Unstartable(multiprocessing.process.BaseProcess):
    """A multiprocessing process whose start fails before anything is forked or spawned."""

    @staticmethod
    def _Popen(process):
        raise OSError("not started")


def test_the_guard_records_multiprocessing_starts():
    """Process, Pool and ProcessPoolExecutor all start their workers through BaseProcess.start (fork or spawn)."""
    before = multiprocessing.process.BaseProcess.start
    with tiers.python_launches() as launched:
        with pytest.raises(OSError, match="not started"):
            _Unstartable(target=print, name="worker-1").start()
    assert launched == ["multiprocessing _Unstartable worker-1"], launched
    assert multiprocessing.process.BaseProcess.start is before  # put back when the guard ends


CONFTEST = """
import pytest
from tests import tiers
from tests.conftest import pytest_runtest_call, pytest_runtest_setup  # the guard, as in the real suite


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    tiers.mark_slow(items, str(config.rootpath))
"""


def test_the_hooks_mark_by_folder_and_fail_a_fast_test_that_starts_python(pytester):
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow tier\n")
    pytester.makeconftest(CONFTEST)
    _plant(pytester.path, {"integration/test_cli.py": "def test_cli(): pass\n",
                           "data/test_fine.py": "def test_fine(): pass\n",
                           "data/test_spawns.py": PLANTED["data/test_spawns.py"]})
    slow = pytester.runpytest_inprocess("-m", "slow", "-q")
    slow.assert_outcomes(passed=1, deselected=2)
    slow.stdout.fnmatch_lines(["*1 passed, 2 deselected*"])
    assert "integration/test_cli.py" in "\n".join(pytester.runpytest_inprocess(
        "-m", "slow", "--collect-only", "-q").outlines)
    fast = pytester.runpytest_inprocess("-m", "not slow", "-q")
    fast.assert_outcomes(passed=1, failed=1, deselected=1)
    fast.stdout.fnmatch_lines(["*a fast-tier test started 1 Python process(es)*"])
