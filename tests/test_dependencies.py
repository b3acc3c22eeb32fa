"""setup.py declares exactly the third-party packages the library imports (no more, no fewer)."""

from __future__ import annotations

import ast
import glob
import importlib.metadata
import importlib.util
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Declared but never imported by name, on purpose (say why).
RUNTIME_ONLY = {
    "array-record": "the TFDS builder's file format; tensorflow-datasets imports it",
    "safetensors": "transformers and peft read our exports with it; we write through models.safetensors_io",
}
# Imported by an optional tool only, and declared as a setup.py extra instead (say which).
EXTRA_ONLY = {
    "scikit-learn": "bsft_jax.data.audit's surface probe: extra 'audit'",
    "google-cloud-storage": "the gs:// run-directory lease (bsft_jax.checkpoint.lease): extra 'gcs'",
    "google-api-core": "the lease's precondition errors (google.api_core.exceptions): extra 'gcs'",
    **dict.fromkeys(("fastapi", "starlette", "uvicorn"), "bsft_jax.serve, the chat server: extra 'serve'"),
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    """Distribution names in setup.py's install_requires."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return {_norm(re.split(r"[<>=!~\[; ]", ast.literal_eval(e))[0]) for e in node.value.elts}
    raise AssertionError("setup.py has no install_requires")


def declared_extras() -> dict[str, list[str]]:
    """setup.py's extras_require, as written."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            d = node.value
            return {ast.literal_eval(k): [ast.unparse(e) for e in v.elts] for k, v in zip(d.keys, d.values)}
    return {}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _owner(module: str, owners: dict[str, list[str]]) -> str:
    """The distribution providing ``module`` (dotted). A namespace package such as ``google`` has many
    owners, so it is resolved by the file the full dotted name imports from, not by its top level."""
    top = module.split(".")[0]
    if len(owners[top]) == 1:
        return _norm(owners[top][0])
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"cannot locate {module}"
    for dist in owners[top]:
        for f in importlib.metadata.distribution(dist).files or ():
            if os.path.realpath(f.locate()) == os.path.realpath(spec.origin):
                return _norm(dist)
    raise AssertionError(f"no installed distribution ships {module} ({spec.origin})")


def imported_distributions() -> set[str]:
    """Distributions providing the modules that bsft_jax/ imports (stdlib and itself excluded)."""
    modules = set()
    for path in glob.glob(os.path.join(ROOT, "bsft_jax", "**", "*.py"), recursive=True):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import):
                modules |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # ``from google.cloud import storage``: in a namespace package the name may be the module
                modules |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    owners = importlib.metadata.packages_distributions()
    found = set()
    for m in modules:
        top = m.split(".")[0]
        if top in set(sys.stdlib_module_names) | {"bsft_jax"}:
            continue
        if len(owners[top]) == 1:
            found.add(_norm(owners[top][0]))
        elif m.count(".") >= 2 and _is_module(m):  # namespace package: name the leaf module's distribution
            found.add(_owner(m, owners))
    return found


def test_declared_dependencies_are_the_imported_ones():
    imported, want = imported_distributions(), declared()
    for dist, why in EXTRA_ONLY.items():
        assert any(dist in e for extra in declared_extras().values() for e in extra), (dist, why)
    missing = imported - want - set(EXTRA_ONLY)
    assert missing == set(), f"imported but not declared in setup.py: {sorted(missing)}"
    unused = want - imported - set(RUNTIME_ONLY)
    assert unused == set(), f"declared in setup.py but never imported: {sorted(unused)}"
