"""Every recipe in configs/ loads, and sets only what differs from the config it starts from."""

from __future__ import annotations

import ast
import glob
import os

import pytest

from bsft_jax.setup.config import default_config, load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _dotted(node: ast.AST) -> str | None:
    """``c.model.arch`` -> ``model.arch`` (None for anything not rooted at the name ``c``)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join(reversed(parts)) if isinstance(node, ast.Name) and node.id == "c" else None


def assigned_fields(path: str) -> tuple[list[str], str | None]:
    """Fields the recipe's get_config sets (``c.a.b = ...`` and ``c.a.update(k=...)``), and its base recipe."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    fields, base = [], None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            fields += [f for f in map(_dotted, node.targets) if f]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "update" and (block := _dotted(node.func.value)):
                fields += [f"{block}.{kw.arg}" for kw in node.keywords]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "load_config_file"):
            base = node.args[1].value
    return fields, base


def _get(cfg, field: str):
    for part in field.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_sets_only_what_differs(path):
    fields, base = assigned_fields(path)
    assert fields, f"{path}: found no assignments (is the test reading it right?)"
    recipe = load_config_file(path, os.path.basename(path))
    parent = default_config() if base is None else load_config_file(path, base)
    same = [f for f in fields if _get(recipe, f) == _get(parent, f)]
    assert not same, f"{os.path.basename(path)} restates {same} (equal to {base or 'default_config()'})"


def test_the_check_catches_a_restated_default(tmp_path):
    path = tmp_path / "restates.py"
    path.write_text("from bsft_jax.setup.config import default_config\n\n"
                    "def get_config():\n    c = default_config()\n    c.optimizer.b1 = 0.9\n"
                    "    c.model.arch.update(num_heads=4)\n    return c\n")
    fields, _ = assigned_fields(str(path))
    recipe = load_config_file(str(path), "restates.py")
    same = [f for f in fields if _get(recipe, f) == _get(default_config(), f)]
    assert same == ["optimizer.b1", "model.arch.num_heads"]
