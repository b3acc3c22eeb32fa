"""The layers of bsft_jax, enforced: no import circle between modules, no import from a higher layer.

Every module is parsed with ``ast`` (nothing is imported). An import counts wherever it is written:
at module level, inside a function (a function-local import is still a dependency; it only moves a
circle's failure from import time to call time), and as a lazy re-export of a package ``__init__``
(a module path in a string, imported on first use by :mod:`bsft_jax._lazy`). Imports under
``if TYPE_CHECKING:`` never run and do not count. bench/'s modules get the same two rules among
themselves (their imports of bsft_jax are outside bench's graph).

Not to be confused with tests/data/test_layering.py, which checks in fresh processes that the light
modules (the data schema, the behavior spec, the lazy public API) import no JAX.
"""

from __future__ import annotations

import ast
import itertools
import os
from collections.abc import Iterable, Mapping

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The layers of bsft_jax, bottom-up, written once: a module may import modules of its own layer and of
# the layers before it. An entry names a module or a package (then every module under it); the
# longest entry that matches a module decides its layer. A package's __init__ is ``<package>.__init__``.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # errors, units, lazy re-exports, storage, atomic writes; setup/cli.py (absl flag parsing and logging for
    # every CLI, models/builtin.py's included) imports nothing of bsft_jax, so it sits here though it lives in setup/
    ("base", ("bsft_jax.errors", "bsft_jax.units", "bsft_jax._lazy", "bsft_jax.storage", "bsft_jax.files",
              "bsft_jax.setup.cli")),
    ("models", ("bsft_jax.models",)),
    ("behavior", ("bsft_jax.behavior",)),
    ("data", ("bsft_jax.data",)),
    ("decode", ("bsft_jax.decode",)),
    # the checkpoint format (folder names, meta, no JAX) sits below set-up, which writes the tokenizer and the
    # model's config where a checkpoint keeps them; the rest of checkpoint/ rebuilds a LoRA base with set-up
    ("format", ("bsft_jax.checkpoint.layout",)),
    # config schema, resolve -> Settings, data splits, tokenizer + model for a run; bsft_jax.run is the old
    # name kept for users' config files (run/config.py re-exports setup/config.py with a DeprecationWarning)
    ("setup", ("bsft_jax.setup", "bsft_jax.run")),
    ("checkpoint", ("bsft_jax.checkpoint",)),  # Orbax manager, reading a step (LoRA merge too), lease, recovery
    # evaluate sits below train: train/steer.py scores held-out items with evaluate.core during training,
    # and nothing in evaluate imports train
    ("evaluate", ("bsft_jax.evaluate",)),
    ("train", ("bsft_jax.train",)),
    ("export", ("bsft_jax.export", "bsft_jax.serve")),
    ("jobs", ("bsft_jax.mainjob", "bsft_jax.__init__")),  # the root __init__: the public API, re-exported lazily
]

# Imports that break the rules today, each with the issue that removes it. An entry is an exact
# (importer, imported) edge; it is exempt from the layer rule and left out of the circle search.
# Empty since issue 26 moved the LoRA step reader and merge into checkpoint/host.py and DecoderConfig's field
# names into models/config_fields.py; keep it empty (move the shared piece down instead).
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}

# Function-local imports of the package's own modules, each with why it is not at module level. Breaking
# a circle is never the reason (the circle test counts these imports too); an import-time cost or an
# optional dependency is. Third-party lazy imports (torch-free GGUF, matplotlib, tensorboardX, sklearn,
# google-cloud, etils/fsspec, transformers) carry a comment where they are written.
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    ("bsft_jax.behavior.tokenizer", "bsft_jax.models.gguf_convert"):
        "behavior/tokenizer.py imports no JAX; the models package's __init__ does",
    ("bsft_jax.models.hf", "bsft_jax.models.builtin"):
        "python -m bsft_jax.models.builtin: runpy warns when models/__init__ has imported builtin first",
    ("bsft_jax.setup.sources", "bsft_jax.data.tfds_builder"): "tensorflow_datasets takes seconds to import",
    ("bsft_jax.serve.__main__", "bsft_jax.serve.app"): "fastapi, the optional extra 'serve'",
}

BENCH_LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("common", ("bench.common", "bench.__init__")),
    ("setup", ("bench.train_setup", "bench.hf_io", "bench.tables")),
    ("harness", ("bench.train_step", "bench.render")),
    ("measurements", ("bench",)),  # every script: it may use any harness module and the scripts it extends
]


# ----------------------------------------------------------------------------- the import graph
def module_files(package_dir: str) -> dict[str, str]:
    """``{module name: file}`` of every .py file under ``package_dir``; a package's init is ``<pkg>.__init__``."""
    base = os.path.dirname(os.path.abspath(package_dir))
    out = {}
    for folder, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                out[os.path.relpath(path, base)[:-3].replace(os.sep, ".")] = path
    return out


def _resolve(name: str, modules: set[str]) -> str | None:
    """The module a dotted import name loads: the module itself, or the package's ``__init__``."""
    if name in modules:
        return name
    return f"{name}.__init__" if f"{name}.__init__" in modules else None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it is function-local; ``if TYPE_CHECKING:`` bodies skipped."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def walk(nodes: Iterable[ast.AST], local: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                walk(node.orelse, local)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append((node, local))
            else:
                inner = local or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                walk(ast.iter_child_nodes(node), inner)

    walk(tree.body, False)
    return found


def _targets(node: ast.Import | ast.ImportFrom, importer: str, modules: set[str]) -> list[str]:
    """The modules an import statement loads (``from pkg import name``: ``pkg.name`` if that is a module,
    else ``pkg``); names outside ``modules`` are dropped."""
    if isinstance(node, ast.Import):
        found = [_resolve(alias.name, modules) for alias in node.names]
    else:
        source = node.module or ""
        if node.level:  # relative to the importer's package
            package = importer.rsplit(".", 1)[0]  # "a.b.c" -> "a.b"; "a.b.__init__" -> "a.b"
            for _ in range(node.level - 1):
                package = package.rsplit(".", 1)[0]
            source = f"{package}.{source}" if source else package
        found = [_resolve(f"{source}.{alias.name}", modules) or _resolve(source, modules) for alias in node.names]
    return [t for t in found if t]


def import_graph(package_dir: str) -> dict[str, dict[str, list[int]]]:
    """``{importer: {imported module: [lines]}}`` between the modules under ``package_dir``."""
    files = module_files(package_dir)
    modules = set(files)
    graph: dict[str, dict[str, list[int]]] = {m: {} for m in files}
    for module, path in files.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        found = [(t, node.lineno) for node, _ in _imports(tree) for t in _targets(node, module, modules)]
        if module.endswith(".__init__"):  # lazy re-exports: {"name": "bsft_jax.x.y"} strings
            found += [(_resolve(n.value, modules), n.lineno) for n in ast.walk(tree)
                      if isinstance(n, ast.Constant) and isinstance(n.value, str) and _resolve(n.value, modules)]
        for target, line in found:
            if target != module and line not in graph[module].get(target, []):
                graph[module].setdefault(target, []).append(line)
    return graph


def function_local_imports(package_dir: str) -> list[tuple[str, int, str]]:
    """``(file, line, statement)`` of every function-local import under ``package_dir``."""
    out = []
    for path in module_files(package_dir).values():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        out += [(os.path.relpath(path, ROOT), node.lineno, ast.unparse(node)) for node, local in _imports(tree)
                if local]
    return sorted(out)


# ----------------------------------------------------------------------------- the two rules
def find_circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import circles of ``graph``: one cycle (``[a, b, ..., a]``) per strongly connected group."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm (graphs here are a few hundred modules)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, set(g)) for g in groups]


def _one_cycle(graph: Mapping[str, Iterable[str]], group: set[str]) -> list[str]:
    """A shortest cycle through the first module of ``group`` (breadth-first inside the group)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    return [*paths[v], start]
                if w in group and w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strongly connected group


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]]) -> int | None:
    """The index of ``module``'s layer (longest matching entry), or None when no entry covers it."""
    best: tuple[int, int] | None = None
    for i, (_, entries) in enumerate(layers):
        for entry in entries:
            if module == entry or module.startswith(entry + "."):
                if best is None or len(entry) > best[0]:
                    best = (len(entry), i)
    return None if best is None else best[1]


def upward_imports(graph: Mapping[str, Mapping[str, list[int]]], layers: list[tuple[str, tuple[str, ...]]]
                   ) -> list[str]:
    """One line per import of a module in a higher layer than its importer."""
    out = []
    for importer, targets in sorted(graph.items()):
        for target, lines in sorted(targets.items()):
            low, high = layer_of(importer, layers), layer_of(target, layers)
            if low is not None and high is not None and high > low:
                out.append(f"{importer} (layer {layers[low][0]}) imports {target} (layer {layers[high][0]}) "
                           f"at line {', '.join(map(str, sorted(set(lines))))}")
    return out


def _without(graph: dict[str, dict[str, list[int]]], exceptions: Iterable[tuple[str, str]]
             ) -> dict[str, dict[str, list[int]]]:
    out = {m: dict(t) for m, t in graph.items()}
    for importer, target in exceptions:
        out.get(importer, {}).pop(target, None)
    return out


def _describe(graph: Mapping[str, Mapping[str, list[int]]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {min(graph[a][b])})" for a, b in itertools.pairwise(cycle)) + f" -> {cycle[-1]}"


# ----------------------------------------------------------------------------- bsft_jax
@pytest.fixture(scope="module")
def package_graph():
    return import_graph(os.path.join(ROOT, "bsft_jax"))


def test_every_module_of_bsft_jax_has_a_layer(package_graph):
    missing = [m for m in package_graph if layer_of(m, LAYERS) is None]
    assert not missing, f"add these modules to a layer in LAYERS (tests/test_layering.py): {missing}"


def test_no_import_circle_between_modules_of_bsft_jax(package_graph):
    graph = _without(package_graph, KNOWN_EXCEPTIONS)
    circles = [_describe(graph, c) for c in find_circles(graph)]
    assert not circles, ("import circles (move the shared piece down a layer instead of importing inside a "
                         "function):\n  " + "\n  ".join(circles))


def test_no_module_of_bsft_jax_imports_from_a_higher_layer(package_graph):
    upward = upward_imports(_without(package_graph, KNOWN_EXCEPTIONS), LAYERS)
    assert not upward, "imports from a higher layer (see LAYERS):\n  " + "\n  ".join(upward)


def test_every_known_exception_is_still_needed(package_graph):
    """An exception whose import is gone must leave the list, so the list only shrinks."""
    stale = [edge for edge in KNOWN_EXCEPTIONS if edge[1] not in package_graph.get(edge[0], {})]
    assert not stale, f"remove from KNOWN_EXCEPTIONS, the import is gone: {stale}"


def test_function_local_imports_of_the_package_are_listed():
    """Every function-local import of a bsft_jax module is in LAZY_IMPORTS, and every entry still exists."""
    files = module_files(os.path.join(ROOT, "bsft_jax"))
    found = set()
    for module, path in files.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        found |= {(module, t) for node, local in _imports(tree) if local for t in _targets(node, module, set(files))}
    assert found - set(LAZY_IMPORTS) == set(), ("move these imports to module level, or list them in LAZY_IMPORTS "
                                                "with the reason (never a circle)")
    assert set(LAZY_IMPORTS) - found == set(), "remove from LAZY_IMPORTS, the import is gone or at module level"


# ----------------------------------------------------------------------------- bench/
@pytest.fixture(scope="module")
def bench_graph():
    return import_graph(os.path.join(ROOT, "bench"))


def test_no_import_circle_between_modules_of_bench(bench_graph):
    circles = [_describe(bench_graph, c) for c in find_circles(bench_graph)]
    assert not circles, "import circles in bench/:\n  " + "\n  ".join(circles)


def test_no_module_of_bench_imports_from_a_higher_layer(bench_graph):
    upward = upward_imports(bench_graph, BENCH_LAYERS)
    assert not upward, "imports from a higher layer (see BENCH_LAYERS):\n  " + "\n  ".join(upward)


# ----------------------------------------------------------------------------- the checker itself
def test_the_checker_catches_a_planted_circle_through_a_function_local_import(tmp_path):
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from planted.high import g  # reaches up, inside a function\n"
                                "    return g()\n")
    (pkg / "high.py").write_text("from planted import low\n\ndef g():\n    return 1\n")
    (pkg / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from planted.high import g\n")
    graph = import_graph(str(pkg))
    assert graph["planted.low"] == {"planted.high": [2]} and graph["planted.high"] == {"planted.low": [1]}
    assert graph["planted.typed"] == {}  # type-checking imports never run
    assert find_circles(graph) == [["planted.high", "planted.low", "planted.high"]]
    layers = [("low", ("planted.low", "planted.typed")), ("high", ("planted.high", "planted.__init__"))]
    assert upward_imports(graph, layers) == [
        "planted.low (layer low) imports planted.high (layer high) at line 2"]
    assert find_circles(_without(graph, [("planted.low", "planted.high")])) == []


def test_the_checker_finds_longer_circles_and_self_imports():
    graph = {"a": {"b": [1]}, "b": {"c": [1]}, "c": {"a": [1]}, "d": {"a": [1]}, "e": {"e": [1]}}
    assert sorted(find_circles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_circles({"a": {"b": [1]}, "b": {}}) == []


def test_lazy_re_exports_count_as_imports(tmp_path):
    pkg = tmp_path / "lazy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("_HOMES = {'thing': 'lazy.sub.impl'}\n")
    (pkg / "sub" / "__init__.py").write_text("from . import impl\nfrom .impl import thing\n")
    (pkg / "sub" / "impl.py").write_text("import lazy\nthing = 1\n")
    graph = import_graph(str(pkg))
    assert graph["lazy.__init__"] == {"lazy.sub.impl": [1]}
    assert graph["lazy.sub.__init__"] == {"lazy.sub.impl": [1, 2]}
    assert find_circles(graph) == [["lazy.__init__", "lazy.sub.impl", "lazy.__init__"]]
