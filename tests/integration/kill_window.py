"""The train CLI with a hook inside Orbax's asynchronous save, so a test can kill -9 inside the save window.

    python -m tests.integration.kill_window MARKER STEP POINT --config ... [--config.x=y ...]

Runs ``bsft_jax.train``'s ``main`` unchanged, except that the background save of ``STEP`` writes
``MARKER`` (the step's temporary folder) and blocks at ``POINT``:

* ``commit``: every array and item written into the temporary folder, the rename to
  ``checkpoints/STEP`` not yet done;
* ``arrays``: while the arrays are being written: the first array write of the step is held back
  (the others go on), so the step's array data is incomplete.

The test then sends SIGKILL: the process dies with that save in flight, as on a host failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

from orbax.checkpoint._src.path import atomicity
from orbax.checkpoint._src.serialization import serialization


def _announce(marker: str, tmp_path: str) -> None:
    with open(marker + ".tmp", "w") as f:
        f.write(tmp_path)
    os.replace(marker + ".tmp", marker)


def install_hook(marker: str, step: int, point: str = "commit") -> None:
    """Makes the save of ``step`` announce its temporary folder in ``marker`` and never finish, at ``point``."""
    if point == "arrays":
        serialize = serialization.async_serialize_from_host
        held: list[str] = []

        async def serialize_then_hold(*args, **kwargs):
            tmp = re.search(rf'"([^"]*/{step}\.orbax-checkpoint-tmp[^/"]*)', json.dumps(args[1]))
            if tmp is None or held:
                return await serialize(*args, **kwargs)
            held.append(tmp.group(1))
            _announce(marker, tmp.group(1))
            await asyncio.sleep(3600)  # the kill lands here, the step's other arrays in flight or written

        serialization.async_serialize_from_host = serialize_then_hold
        return
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize_with_window(self: atomicity.AtomicRenameTemporaryPath) -> None:
        if self._final_path.name == str(step):  # the step folder (items are finalized inside it)
            _announce(marker, str(self._tmp_path))
            await asyncio.sleep(3600)  # the kill lands here
        await finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize_with_window


if __name__ == "__main__":
    install_hook(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    from bsft_jax.train.__main__ import main

    sys.exit(main([sys.argv[0], *sys.argv[4:]]))
