"""Data flows down: the record schema and the behavior spec import no JAX, Flax or Grain."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.processes import ROOT, subprocess_env


@pytest.mark.parametrize("module", ["bsft_jax.data.schema", "bsft_jax.behavior.spec", "bsft_jax.data.format",
                                    "bsft_jax.data.reply", "bsft_jax"])
def test_module_imports_without_jax(module):
    code = (f"import sys, {module}\n"
            "heavy = sorted(m for m in ('jax', 'flax', 'grain', 'optax') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env=subprocess_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"importing {module} pulled in {out.stdout.strip()}"


def test_public_names_still_resolve():
    import bsft_jax

    for name in bsft_jax.__all__:
        assert getattr(bsft_jax, name) is not None, name
