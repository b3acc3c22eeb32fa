"""The train CLI with a hook inside Orbax's asynchronous save, so a test can kill -9 inside the save window.

    python -m tests.train.kill_window MARKER STEP --config ... [--config.x=y ...]

Runs ``bsft_jax.train``'s ``main`` unchanged, except that when the background save of ``STEP``
reaches its commit (every array and item written into the temporary folder, the rename to
``checkpoints/STEP`` not yet done) it writes ``MARKER`` (the temporary folder's path) and blocks.
The test then sends SIGKILL: the process dies with that save in flight, as on a host failure.
"""

from __future__ import annotations

import asyncio
import os
import sys

from orbax.checkpoint._src.path import atomicity


def install_hook(marker: str, step: int) -> None:
    """Makes the commit of ``step``'s step folder announce itself in ``marker`` and never finish."""
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize_with_window(self: atomicity.AtomicRenameTemporaryPath) -> None:
        if self._final_path.name == str(step):  # the step folder (items are finalized inside it)
            with open(marker + ".tmp", "w") as f:
                f.write(str(self._tmp_path))
            os.replace(marker + ".tmp", marker)
            await asyncio.sleep(3600)  # the kill lands here
        await finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize_with_window


if __name__ == "__main__":
    install_hook(sys.argv[1], int(sys.argv[2]))
    from bsft_jax.train.__main__ import main

    sys.exit(main([sys.argv[0], *sys.argv[3:]]))
