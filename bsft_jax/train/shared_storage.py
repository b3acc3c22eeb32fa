"""At the start of a multi-host run: check that every process sees the same run directory.

Orbax writes each process's array shards into the checkpoint directory and process 0 writes the
metadata and the commit marker. With a run directory local to each host (every TPU VM has its
own disk), no host holds a complete checkpoint and a resume or an export fails much later. So
before anything is written: process 0 writes a random token into the run directory, all
processes meet at a barrier, every process reads the token back, and all of them stop with one
clear line if any process could not.
"""

from __future__ import annotations

import logging
import secrets

import jax
import numpy as np
from jax.experimental import multihost_utils

from bsft_jax import storage
from bsft_jax.files import atomic_write
from bsft_jax.setup.settings import ConfigError

log = logging.getLogger(__name__)

CHECK_FILE = ".shared_storage_check"
TOKEN_BYTES = 16


class SharedStorageError(ConfigError):
    """The run directory is not one storage that every process of the job reads and writes."""


def _broadcast_token(token: bytes) -> bytes:
    """Process 0's ``token`` on every process."""
    arr = np.frombuffer(token, np.uint8).astype(np.int32)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(arr)).astype(np.uint8).tolist())


def _read_token(path: str) -> str:
    try:
        return storage.read_text(path).strip()
    except (OSError, ValueError):  # missing or unreadable: not the same storage
        return ""


def check_shared_run_dir(run_dir: str) -> None:
    """Raises :class:`SharedStorageError` on every process unless all of them see process 0's writes.

    A no-op with one process. Call it on every process, before the first checkpoint.
    """
    if jax.process_count() == 1:
        return
    token = _broadcast_token(secrets.token_bytes(TOKEN_BYTES)).hex()
    path = storage.join(run_dir, CHECK_FILE)
    if jax.process_index() == 0:
        storage.makedirs(run_dir)
        with atomic_write(path) as f:
            f.write(token + "\n")
    multihost_utils.sync_global_devices("bsft_shared_storage_written")
    seen = np.int32(_read_token(path) == token)
    everyone = np.asarray(multihost_utils.process_allgather(seen)).reshape(-1)
    multihost_utils.sync_global_devices("bsft_shared_storage_read")
    if jax.process_index() == 0:
        storage.remove(path)
    blind = [i for i, ok in enumerate(everyone.tolist()) if not ok]
    if blind:
        raise SharedStorageError(
            f"config.run_dir={run_dir!r}: process(es) {blind} of {jax.process_count()} cannot read the file process 0 "
            f"wrote there ({CHECK_FILE}); the run directory must be storage that all hosts share, such as "
            "gs://bucket/run or NFS")
    log.info("run directory %s is shared by all %d processes", run_dir, jax.process_count())
