"""One writer per run directory: the trainer's exclusive, renewed lease ``RUN_DIR/lease.json``.

Two trainers writing one run directory (a job relaunched while its old pods still terminate, a
SLURM requeue that overlaps, a rerun by hand) would save steps into the same Orbax folder. So the
process that writes a run's metadata (process 0) takes a lease before it writes anything, renews it
from a daemon thread every ``expiry / 6`` seconds, and gives it back when the run ends. A second
trainer is refused with one line (:class:`RunDirBusyError`, exit 2) naming the holder and when it
was last alive. Readers (evaluate, export) never take it.

The lease is a small JSON object: the holder's host, pid, start time, last heartbeat, its expiry
and a random token. It is created only if absent, atomically:

* local disk and NFS: ``open(O_CREAT | O_EXCL)`` (atomic on the NFS server since NFSv3). Renewals
  and take-overs rewrite it through a temporary file and ``os.replace``, each inside a short
  mutual exclusion (``lease.json.mutex``, itself ``O_EXCL``), after checking the token is the one
  expected, so a renewal and a take-over never interleave;
* ``gs://``: an object written with a generation precondition (``ifGenerationMatch=0``: only if
  absent; a renewal or take-over matches the generation it read, so of two writers exactly one
  wins), through ``google-cloud-storage`` (the ``gcs`` extra).

A holder that is provably gone is taken over at once: a process on this machine (same host name,
boot and pid namespace) that no longer exists (or is a zombie, or whose pid now belongs to a later
process), or a lease not renewed for longer than its expiry (a killed job on another host, or one
that hangs). ``config.lease.force_takeover`` takes it from a live-looking holder too (logged); the
displaced holder finds a foreign token at its next renewal and stops writing (the trainer exits, status
:data:`LEASE_LOST_EXIT`). Expiry compares wall clocks of two hosts: keep them NTP-synchronised (the
default expiry of minutes tolerates seconds of skew).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from bsft_jax import storage
from bsft_jax.errors import UserError, one_line
from bsft_jax.setup.settings import LeaseSettings

log = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
LEASE_LOST_EXIT = 3  # exit status of a trainer whose lease was taken over while it ran
_CREATE_ATTEMPTS = 8  # create / take-over rounds before giving up on a lease others keep changing
_SETTLE_SECONDS = 0.5  # how long an empty local lease file (a creator between open and write) may stay empty
_MUTEX_STALE_SECONDS = 10.0  # a mutex is held for milliseconds; one this old belongs to a dead process


class RunDirBusyError(UserError):
    """Another live trainer holds the run directory's lease."""


class _Contended(Exception):
    """The local mutex is held by another process right now: try again later."""


# ----------------------------------------------------------------------------- who holds it
def _read_first(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot (Linux ``/proc``), or "" when unknown or gone."""
    stat = _read_first(f"/proc/{pid}/stat")
    if not stat:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def _machine() -> str:
    """This kernel's boot and pid namespace: a pid means the same process only where both agree."""
    boot = _read_first("/proc/sys/kernel/random/boot_id")
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = ""
    return f"{boot}/{pidns}" if boot else ""


def _this_host() -> str:
    return socket.gethostname()


@dataclasses.dataclass(frozen=True)
class Holder:
    """What a lease says about the trainer holding it."""

    token: str
    host: str
    pid: int
    started: float  # unix time the holder took the lease
    heartbeat: float  # unix time of its last renewal
    expiry_seconds: float
    machine: str = ""  # boot id / pid namespace (see _machine)
    process_start: str = ""  # the pid's start time, so a reused pid is not mistaken for the holder

    def to_bytes(self) -> bytes:
        return (json.dumps(dataclasses.asdict(self), indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, fallback_time: float) -> Holder:
        """Parses a lease; an unreadable one (torn, foreign) is a holder last seen at ``fallback_time``."""
        try:
            d = json.loads(data.decode())
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in d.items() if k in names})
        except (ValueError, TypeError, AttributeError):
            return cls(token="", host="?", pid=0, started=fallback_time, heartbeat=fallback_time,
                       expiry_seconds=0.0)

    def describe(self, now: float) -> str:
        """``host H pid P (started ..., last alive N s ago)``."""
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
        ago = max(now - self.heartbeat, 0.0)
        return f"host {self.host} pid {self.pid} (started {started}, last alive {ago:.0f} s ago)"


def gone_reason(holder: Holder, now: float, expiry_seconds: float) -> str | None:
    """Why ``holder`` is provably gone, or None while it may still be writing.

    ``expiry_seconds`` applies when the lease does not state its own (a torn or foreign file).
    """
    expiry = holder.expiry_seconds or expiry_seconds
    if now - holder.heartbeat > expiry:
        return f"its lease was last renewed {now - holder.heartbeat:.0f} s ago, past its {expiry:g} s expiry"
    if holder.pid and holder.host == _this_host() and holder.machine and holder.machine == _machine():
        start = _process_start(holder.pid)
        alive = _pid_exists(holder.pid) and _read_state(holder.pid) != "Z"
        if not alive or (start and holder.process_start and start != holder.process_start):
            return f"its process {holder.pid} on this host no longer exists"
    return None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read_state(pid: int) -> str:
    stat = _read_first(f"/proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[0] if fields else ""


# ----------------------------------------------------------------------------- where it lives
class _LocalStore:
    """The lease as a file: exclusive create, and token-checked rewrites inside a short mutex."""

    def __init__(self, path: str):
        self.path = path
        self.mutex = path + ".mutex"

    def read(self) -> tuple[Holder | None, Any]:
        """``(holder, version)``; ``(None, None)`` when absent. The version is the holder's token."""
        deadline = time.monotonic() + _SETTLE_SECONDS
        while True:
            try:
                with open(self.path, "rb") as f:
                    data = f.read()
                mtime = os.stat(self.path).st_mtime
            except FileNotFoundError:
                return None, None
            if data.strip() or time.monotonic() > deadline:  # empty: its creator is between open and write
                holder = Holder.from_bytes(data, mtime)
                return holder, holder.token
            time.sleep(0.02)

    def create(self, data: bytes) -> Any:
        """Writes ``data`` only if there is no lease: its version, or None if there is one."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return json.loads(data)["token"]

    def replace(self, data: bytes, version: Any) -> Any:
        """Rewrites the lease if it still holds token ``version`` (None: if absent); the new version, or None."""
        with self._locked():
            current, token = self.read()
            if (current is None and version is not None) or (current is not None and token != version):
                return None
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            return json.loads(data)["token"]

    def delete(self, version: Any) -> None:
        """Removes the lease if it still holds token ``version``."""
        with self._locked():
            _, token = self.read()
            if token == version:
                os.remove(self.path)

    @contextlib.contextmanager
    def _locked(self, wait: float = 2.0) -> Iterator[None]:
        deadline = time.monotonic() + wait
        while True:
            try:
                os.close(os.open(self.mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                break
            except FileExistsError:
                try:
                    if time.time() - os.stat(self.mutex).st_mtime > _MUTEX_STALE_SECONDS:
                        os.remove(self.mutex)  # its owner died inside a few milliseconds' window
                        continue
                except FileNotFoundError:
                    continue
                if time.monotonic() > deadline:
                    raise _Contended(self.mutex) from None
                time.sleep(0.01)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.mutex)


def _google_cloud() -> SimpleNamespace:
    """``gcs`` (google.cloud.storage), ``exceptions`` (google.api_core's) and ``DEFAULT_RETRY``.

    Imported here, not at module level: google-cloud-storage is the optional extra 'gcs', needed only
    for a gs:// run directory's lease.
    """
    try:
        from google.api_core import exceptions
        from google.cloud import storage as gcs
        from google.cloud.storage.retry import DEFAULT_RETRY
    except ImportError as e:
        raise UserError("a gs:// run directory needs google-cloud-storage for its lease: "
                        "pip install 'bsft_jax[gcs]'") from e
    return SimpleNamespace(gcs=gcs, exceptions=exceptions, DEFAULT_RETRY=DEFAULT_RETRY)


class _GcsStore:
    """The lease as an object: every write and delete carries a generation precondition.

    Each request is retried on transient faults for up to ``seconds`` (the client's backoff with jitter;
    a conditional write whose answer was lost is recognised by its token, see :meth:`RunLease.acquire`).
    """

    def __init__(self, url: str):
        self.url = url
        bucket, _, self.name = url.split("://", 1)[1].partition("/")
        self.google = _google_cloud()
        # a client of its own per lease (the heartbeat thread uses it; clients are not shared across threads)
        self.bucket = self.google.gcs.Client().bucket(bucket)
        self.seconds = storage.retry_seconds()

    def _retry(self) -> Any:
        return self.google.DEFAULT_RETRY.with_timeout(self.seconds)

    def read(self) -> tuple[Holder | None, Any]:
        """``(holder, generation)``; ``(None, None)`` when absent."""
        blob = self.bucket.blob(self.name)
        try:
            data = blob.download_as_bytes(retry=self._retry())
        except self.google.exceptions.NotFound:
            return None, None
        if blob.generation is None:
            blob.reload()
        updated = blob.updated.timestamp() if blob.updated is not None else time.time()
        return Holder.from_bytes(data, updated), int(blob.generation)

    def create(self, data: bytes) -> Any:
        """Writes ``data`` only if there is no lease: its generation, or None if there is one."""
        return self.replace(data, 0)

    def replace(self, data: bytes, version: Any) -> Any:
        """Writes if the object's generation is still ``version`` (0: absent); the new generation, or None."""
        blob = self.bucket.blob(self.name)
        try:
            blob.upload_from_string(data, content_type="application/json", if_generation_match=int(version or 0),
                                    retry=self._retry())
        except self.google.exceptions.PreconditionFailed:
            return None
        return int(blob.generation)

    def delete(self, version: Any) -> None:
        gexc = self.google.exceptions
        with contextlib.suppress(gexc.PreconditionFailed, gexc.NotFound):
            self.bucket.blob(self.name).delete(if_generation_match=int(version), retry=self._retry())


def _store(path: str) -> _LocalStore | _GcsStore | None:
    if not storage.is_url(path):
        return _LocalStore(path)
    if path.startswith("gs://"):
        return _GcsStore(path)
    return None


# ----------------------------------------------------------------------------- the lease
def _log_lost(message: str) -> None:
    log.error("%s", message)


def exit_on_lost(message: str) -> None:
    """The trainer's policy when its lease is taken over: one line on stderr, exit at once (writes nothing more)."""
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(LEASE_LOST_EXIT)


class RunLease:
    """The exclusive lease on ``run_dir``: ``with RunLease(run_dir, settings):`` (or acquire / release).

    on_lost: called (from the heartbeat thread) with one line when another trainer took the lease
             over while this one held it; the default logs it (the trainer passes :func:`exit_on_lost`).
    """

    def __init__(self, run_dir: str, settings: LeaseSettings | None = None, *,
                 on_lost: Callable[[str], None] = _log_lost):
        self.run_dir = storage.abspath(run_dir)
        self.path = storage.join(self.run_dir, LEASE_FILE)
        self.settings = settings or LeaseSettings()
        self.on_lost = on_lost
        self.token = uuid.uuid4().hex
        self.started = 0.0
        self._store = _store(self.path)
        self._version: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()

    @property
    def held(self) -> bool:
        return self._thread is not None and not self.lost.is_set()

    def _record(self, now: float) -> bytes:
        return Holder(token=self.token, host=_this_host(), pid=os.getpid(), started=self.started or now,
                      heartbeat=now, expiry_seconds=float(self.settings.expiry_seconds), machine=_machine(),
                      process_start=_process_start(os.getpid())).to_bytes()

    def acquire(self) -> RunLease:
        """Takes the lease or raises :class:`RunDirBusyError` naming the holder."""
        if self._store is None:
            log.warning("%s: no lease on this kind of storage (only local paths and gs://); make sure no other "
                        "trainer writes this run directory", self.run_dir)
            return self
        storage.makedirs(self.run_dir)
        holder = None
        for _ in range(_CREATE_ATTEMPTS):
            now = time.time()
            self.started = now
            created = self._store.create(self._record(now))
            if created is not None:
                self._version = created
                return self._start()
            holder, version = self._store.read()
            if holder is None:
                continue  # released meanwhile: create again
            if holder.token == self.token:  # our create went through but its answer was lost (a retried upload)
                self._version = version
                return self._start()
            reason = gone_reason(holder, now, self.settings.expiry_seconds)
            if reason is None and not self.settings.force_takeover:
                raise self._busy(holder, now)
            try:
                new = self._store.replace(self._record(now), version)
            except _Contended:
                new = None
            if new is not None:
                if reason is None:
                    log.warning("config.lease.force_takeover: taking over %s from %s, which still looked alive",
                                self.run_dir, holder.describe(now))
                else:
                    log.warning("taking over the lease of %s from %s: %s", self.run_dir, holder.describe(now), reason)
                self._version = new
                return self._start()
            time.sleep(0.05)  # someone else changed it first: look again
        last = "" if holder is None else f" (last holder {holder.describe(time.time())})"
        raise RunDirBusyError(f"{self.run_dir}: could not take the run-directory lease {self.path}: other trainers "
                              f"keep changing it{last}; make sure only one trainer writes this run directory")

    def _busy(self, holder: Holder, now: float) -> RunDirBusyError:
        expiry = holder.expiry_seconds or self.settings.expiry_seconds
        left = max(expiry - (now - holder.heartbeat), 0.0)
        return RunDirBusyError(
            f"{self.run_dir} is in use by another trainer: {holder.describe(now)}, lease {self.path}; "
            "two trainers must not write one run directory. If that job is gone, rerun after its lease expires "
            f"(in {left:.0f} s) or with --config.lease.force_takeover=true")

    def _start(self) -> RunLease:
        log.debug("took the lease of %s (renewed every %.0f s, expires after %.0f s without renewal)", self.run_dir,
                  self.settings.heartbeat_seconds, self.settings.expiry_seconds)
        if isinstance(self._store, _GcsStore):  # a renewal that cannot get through is retried at the next beat
            self._store.seconds = min(self._store.seconds, self.settings.heartbeat_seconds)
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="bsft-run-lease", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                new = self._store.replace(self._record(time.time()), self._version)
                if new is None:
                    holder, version = self._store.read()
                    if holder is not None and holder.token == self.token:  # our write landed; its answer did not
                        self._version = version
                        continue
                    self.lost.set()
                    taker = "nobody (the lease was deleted)" if holder is None else holder.describe(time.time())
                    self.on_lost(f"{self.run_dir}: this trainer's run-directory lease was taken over by {taker}; "
                                 "stopping so that only one trainer writes this run directory")
                    return
                self._version = new
            except Exception as e:  # a storage hiccup: renew at the next beat (the expiry allows several misses)
                log.warning("%s: could not renew the run-directory lease (will retry): %s", self.run_dir, one_line(e))

    def release(self) -> None:
        """Stops renewing and removes the lease (if it is still ours)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self.lost.is_set():
            return
        try:
            # Looked up again, not self._version: a renewal that landed but whose answer was lost for good (its
            # retries ran out) left that one stale, and a delete on a stale generation would leave the lease behind.
            holder, version = self._store.read()
            if holder is not None and holder.token == self.token:
                self._store.delete(version)
        except Exception as e:  # it lapses by itself after its expiry
            log.warning("%s: could not remove the run-directory lease %s (it expires by itself): %s", self.run_dir,
                        self.path, one_line(e))

    def __enter__(self) -> RunLease:
        return self.acquire() if self._thread is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextlib.contextmanager
def take_run_lease(run_dir: str, settings: LeaseSettings, *, primary: bool,
                   all_agree: Callable[[bool], bool] = lambda ok: ok,
                   on_lost: Callable[[str], None] = exit_on_lost) -> Iterator[RunLease | None]:
    """``with take_run_lease(...):`` the trainer's lease, taken by the primary process only.

    Every process of the job calls it: ``all_agree`` (a collective: True only if every process passes
    True) lets the others stop with the primary's error instead of waiting for it in the next collective.
    """
    lease, error = None, None
    if primary:
        try:
            lease = RunLease(run_dir, settings, on_lost=on_lost).acquire()
        except Exception as e:  # re-raised below, after the other processes know
            error = e
    if not all_agree(error is None):
        if error is not None:
            raise error
        raise RunDirBusyError(f"{storage.abspath(run_dir)}: process 0 could not take the run-directory lease "
                              "(its log says why)")
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()
