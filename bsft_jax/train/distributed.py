"""Multi-host start-up and per-process data sharding.

:func:`maybe_initialize` calls ``jax.distributed.initialize`` when the environment says there
are several processes, before anything touches a JAX backend:

* explicit settings in the config (``distributed.coordinator_address``, ``num_processes``,
  ``process_id``; what ``launch/local.py`` passes);
* SLURM (``SLURM_NTASKS`` > 1) and Open MPI / other clusters that JAX auto-detects;
* a multi-host TPU slice (``TPU_WORKER_HOSTNAMES`` with more than one host, or ``MEGASCALE_*``);
* ``JAX_COORDINATOR_ADDRESS`` set by a launcher.

``BSFT_LOCAL_DEVICE_IDS=0,1,...`` (set by ``launch/slurm.py --per host``) lists the local GPUs a
process drives.

``distributed.initialize`` = "never" skips it (single process), "always" forces it (JAX's own
auto-detection then fills in the rest).

A multi-host job dies whole: ``distributed.peer_timeout_seconds`` is JAX's heartbeat timeout. When a
process dies (kill -9, a host lost), the coordination service marks it dead after that long without a
heartbeat and every other process aborts (``Terminating process because the JAX distributed service
detected fatal errors``, a non-zero status) instead of waiting in its next collective; if the dead one
is process 0 (the coordinator), the others' heartbeats fail and they abort the same way. Measured on
CPU (gloo): within about twice the timeout (docs/clusters.md). The restart resumes from the newest
complete checkpoint.

JAX's own way out is a fatal log and SIGABRT (its client's missed-heartbeat callback cannot be replaced
from Python: the status does not convert). So every process also runs a :class:`PeerWatchdog`: a
counter of its own in the coordination service's key-value store, bumped every ``timeout / 20`` s,
and a look at the others'. A peer whose counter stood still for ``0.4 x timeout`` (JAX's heartbeat
verdict came after 0.64 x in our tests), or a store that no longer answers (the coordinator is
gone), ends the process with one ``error:`` line and exit status :data:`EXIT_PEER_LOST` (75,
``EX_TEMPFAIL``: retry), which a scheduler's requeue rule can match. A collective that fails first
(gloo: "connection closed by peer") waits for that verdict (:func:`after_collective_error`). A
process that finishes marks itself done, so its peers do not take its exit for a death. When process
0 dies, JAX's client may still abort first (it sees the service gone within a second).

Each process feeds only the rows of the global batch that live on its own devices:
:func:`data_shard` derives them from the batch sharding, so it stays right for any mesh
(including meshes whose ``tensor`` axis spans processes, where processes share rows).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from bsft_jax.setup.settings import DistributedSettings

log = logging.getLogger(__name__)

EXIT_PEER_LOST = 75  # sysexits.h EX_TEMPFAIL: the job failed for a reason a restart can fix
_KEY = "bsft_jax/peer_watchdog"


def peer_lost(reason: str) -> None:
    """One ``error:`` line on stderr, then exit :data:`EXIT_PEER_LOST` at once: no cleanup, because the
    peers' collectives would hang and the newest complete checkpoint on storage is the state."""
    sys.stderr.write(f"error: process {jax.process_index()} of {jax.process_count()}: {reason}; the job stops "
                     f"(exit {EXIT_PEER_LOST}) and a restart resumes from the newest complete checkpoint\n")
    sys.stderr.flush()
    os._exit(EXIT_PEER_LOST)


class PeerWatchdog:
    """Tells a dead peer from a slow one through the coordination service (see the module docstring).

    ``client``: the ``jax.distributed`` client (key-value store); ``timeout``: the peer timeout in
    seconds. :meth:`start` runs a daemon thread; :meth:`finish` marks this process done and stops it.
    """

    def __init__(self, client: Any, process_id: int, num_processes: int, timeout: float):
        self.client, self.me = client, process_id
        self.peers = [p for p in range(num_processes) if p != process_id]
        self.period = max(timeout / 20.0, 0.2)
        self.limit = 0.4 * timeout  # JAX's own verdict came after 0.64 x its timeout in tests
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bsft-peer-watchdog", daemon=True)

    def start(self) -> PeerWatchdog:
        self._thread.start()
        return self

    def finish(self) -> None:
        """This process is done (a normal exit): peers stop watching it; safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self.client.key_value_set(f"{_KEY}/done/{self.me}", "1", allow_overwrite=True)
        except Exception:  # (the store is gone at exit: nothing left to tell)
            pass

    def wait_for_verdict(self) -> None:
        """Blocks until the watchdog has had the time to see a dead peer (it then ends the process)."""
        self._lost.wait(self.limit + 2 * self.period)

    def _get(self, key: str) -> str | None:
        try:
            return self.client.key_value_try_get(key)
        except Exception as e:  # (the binding raises one error type for all statuses)
            if "not_found" in str(e).lower().replace(" ", "_"):
                return None
            raise

    def _watch(self) -> None:
        beat, last = 0, {p: (None, time.monotonic()) for p in self.peers}
        while not self._stop.wait(self.period):
            try:
                beat += 1
                self.client.key_value_set(f"{_KEY}/alive/{self.me}", str(beat), allow_overwrite=True)
                now = time.monotonic()
                for p in self.peers:
                    if self._get(f"{_KEY}/done/{p}") is not None:
                        continue
                    value = self._get(f"{_KEY}/alive/{p}")
                    if value != last[p][0]:
                        last[p] = (value, now)
                    elif now - last[p][1] > self.limit and not self._stop.is_set():
                        self._lost.set()
                        peer_lost(f"process {p} has not been heard from for {now - last[p][1]:.0f} s "
                                  f"(distributed.peer_timeout_seconds={self.limit / 0.4:g})")
                        return  # (peer_lost does not return; a test's stand-in does)
            except Exception as e:  # (any failure of the store: the coordinator is gone)
                if self._stop.is_set():
                    return
                self._lost.set()
                peer_lost(f"the job's coordination service does not answer ({' '.join(str(e).split())[:200]})")
                return


_WATCHDOG: PeerWatchdog | None = None


def after_collective_error() -> None:
    """Called when a step's collective failed in a multi-process job: if a peer died, the watchdog ends
    the process with its one line within its limit; otherwise this returns and the error propagates."""
    if _WATCHDOG is not None:
        _WATCHDOG.wait_for_verdict()


def _start_watchdog(timeout: float) -> None:
    global _WATCHDOG
    from jax._src import distributed as jax_distributed  # the client initialize() made (no public accessor)

    client = jax_distributed.global_state.client
    if client is None or jax.process_count() < 2:
        return
    _WATCHDOG = PeerWatchdog(client, jax.process_index(), jax.process_count(), timeout).start()
    atexit.register(_WATCHDOG.finish)  # runs before jax's own shutdown (registered earlier, so later)


def _multi_process_environment() -> str | None:
    """Why the environment looks multi-process (for the log), or None."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS is set"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return f"SLURM_NTASKS={env['SLURM_NTASKS']}"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return f"OMPI_COMM_WORLD_SIZE={env['OMPI_COMM_WORLD_SIZE']}"
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(hosts) > 1:
        return f"TPU slice with {len(hosts)} hosts"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "multislice TPU (MEGASCALE_COORDINATOR_ADDRESS)"
    return None


def maybe_initialize(settings: DistributedSettings) -> bool:
    """Initialises ``jax.distributed`` if the settings or environment ask for it; returns whether it did.

    ``settings``: the resolved ``config.distributed`` (:func:`bsft_jax.setup.config.distributed_settings`).
    Safe to call twice (a second call is a no-op).
    """
    if jax.distributed.is_initialized():
        return True
    mode = settings.initialize
    if mode == "never":
        return False
    kwargs: dict[str, Any] = {}
    if settings.coordinator_address:
        kwargs["coordinator_address"] = settings.coordinator_address
        if settings.num_processes > 0:
            kwargs["num_processes"] = int(settings.num_processes)
        if settings.process_id >= 0:
            kwargs["process_id"] = int(settings.process_id)
        reason = f"coordinator {settings.coordinator_address} from the config"
    else:
        reason = _multi_process_environment()
        if reason is None and mode != "always":
            return False
        reason = reason or "distributed.initialize='always'"
    local_ids = os.environ.get("BSFT_LOCAL_DEVICE_IDS", "").strip()
    if local_ids:
        # One process driving several GPUs of its host (launch/slurm.py --per host): without this
        # JAX's SLURM detection would give every process only the GPU numbered by SLURM_LOCALID.
        try:
            kwargs["local_device_ids"] = [int(i) for i in local_ids.split(",")]
        except ValueError:
            raise ValueError(f"BSFT_LOCAL_DEVICE_IDS={local_ids!r}: expected comma-separated integers") from None
    # A dead peer ends the whole job within about 2 x this (JAX's heartbeat, in the coordination service).
    kwargs["heartbeat_timeout_seconds"] = int(settings.peer_timeout_seconds)
    log.info("jax.distributed.initialize (%s; peer timeout %d s)", reason, settings.peer_timeout_seconds)
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    _start_watchdog(float(settings.peer_timeout_seconds))
    return True


def is_primary() -> bool:
    """Process 0 writes logs, metrics and metadata; the others stay quiet."""
    return jax.process_index() == 0


@dataclasses.dataclass(frozen=True)
class DataShard:
    """This process's part of every global batch: rows ``[index * rows, (index + 1) * rows)``."""

    index: int
    count: int
    rows: int  # per-process batch size


def data_shard(sharding: jax.sharding.Sharding, global_batch: int) -> DataShard:
    """The contiguous block of global-batch rows that this process's devices hold.

    Processes whose devices hold the same rows (batch replicated across them) get the same
    shard index and must feed identical data.
    """
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    starts, stops = [], []
    for idx in index_map.values():
        sl = idx[0] if idx else slice(None)
        start, stop, _ = sl.indices(global_batch)
        starts.append(start)
        stops.append(stop)
    lo, hi = min(starts), max(stops)
    covered = np.zeros(global_batch, bool)
    for a, b in zip(starts, stops):
        covered[a:b] = True
    if not covered[lo:hi].all():
        raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows {sorted(zip(starts, stops))}; "
                         "use a mesh whose batch axes follow the process order")
    rows = hi - lo
    if global_batch % rows or lo % rows:
        raise ValueError(f"process batch block [{lo}, {hi}) does not tile the global batch of {global_batch}")
    return DataShard(index=lo // rows, count=global_batch // rows, rows=rows)


def global_batch_from_local(local: dict[str, np.ndarray], sharding: jax.sharding.Sharding,
                            global_batch: int) -> dict[str, jax.Array]:
    """Assembles global [B, T] arrays from each process's [B_local, T] rows (no cross-host copy)."""
    out = {}
    for key, arr in local.items():
        arr = np.asarray(arr)
        out[key] = jax.make_array_from_process_local_data(sharding, arr, (global_batch, *arr.shape[1:]))
    return out


def reduce_over_processes(x: np.ndarray, reduce: Any) -> np.ndarray:
    """``reduce(values of every process, axis=0)``, e.g. ``np.sum`` or ``np.max`` (``x`` itself on one process).

    The one home of host-side cross-process reductions (eval counts, batch counts).
    """
    if jax.process_count() == 1:
        return x
    return np.asarray(reduce(np.asarray(multihost_utils.process_allgather(x)), axis=0))
