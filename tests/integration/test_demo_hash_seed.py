"""The demo generator gives the same records in every process (moved from tests/data/test_demo_v2.py:
it needs fresh interpreters with their own PYTHONHASHSEED)."""

import subprocess
import sys

from tests.processes import ROOT, subprocess_env


def test_generation_does_not_depend_on_the_string_hash_seed():
    # Every process gets its own PYTHONHASHSEED; a scene's split once hashed a frozenset's repr, so the
    # DDX test scenes changed from one process to the next. Two seeds must give the same records.
    code = ("import hashlib\nfrom bsft_jax.data.demo import generate_split\n"
            "rs = generate_split('test', 130)\n"
            "print(hashlib.sha1(repr([(r.id, r.turns, r.label, r.options) for r in rs]).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300,
                              cwd=ROOT, env=subprocess_env(PYTHONHASHSEED=seed)).stdout
               for seed in ("1", "2")}
    assert len(digests) == 1, digests
