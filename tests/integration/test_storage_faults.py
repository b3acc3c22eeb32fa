"""Storage faults: transient bucket errors are retried with backoff and jitter, within a bound; what still
fails is one line naming the path; a full disk during a save is one line naming the folder, the previous
step intact.

The retry helper is checked on its own (fake faults, no sleeping), then every gs:// operation of
:mod:`bsft_jax.storage` through :class:`tests.integration.fault_proxy.FaultProxy` (503s and dropped connections in front
of the local GCS emulator). The training runs through the proxy are in tests/integration/test_storage_fault_run.py.
"""

from __future__ import annotations

import errno
import json
import os
import time

import numpy as np
import pytest

from bsft_jax import storage
from bsft_jax.errors import UserError
from bsft_jax.storage import StorageError, is_transient, retry

from .fault_proxy import FaultProxy
from .gcs_emulator import emulator_env, gcs_bucket, gcs_server  # noqa: F401  (pytest fixtures)


class _HttpError(Exception):
    """Like gcsfs's HttpError / google.api_core's exceptions: an HTTP status in ``.code``."""

    def __init__(self, code: int):
        super().__init__(f"HTTP {code}")
        self.code = code


class ServerDisconnectedError(Exception):  # the name aiohttp uses: matched by name, aiohttp not imported
    pass


@pytest.fixture
def no_sleep(monkeypatch):
    """Records the backoff delays instead of sleeping them; time advances by the delay."""
    delays: list[float] = []
    now = [1000.0]
    monkeypatch.setattr(storage.time, "sleep", lambda s: (delays.append(s), now.__setitem__(0, now[0] + s)))
    monkeypatch.setattr(storage.time, "monotonic", lambda: now[0])
    return delays


@pytest.mark.parametrize("fault", [_HttpError(503), _HttpError(429), _HttpError(500), _HttpError(408),
                                   ConnectionResetError("reset"), TimeoutError("timed out"),
                                   ServerDisconnectedError("Server disconnected"),
                                   ValueError("UNAVAILABLE: tensorstore could not reach the bucket")],
                         ids=lambda e: type(e).__name__ + str(getattr(e, "code", "")))
def test_transient_faults_are_retried_until_the_call_succeeds(no_sleep, fault):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise fault
        return "ok"

    assert retry(flaky, "upload gs://b/x") == "ok"
    assert len(calls) == 4 and len(no_sleep) == 3
    for attempt, delay in enumerate(no_sleep, 1):  # full jitter: anywhere up to the doubled cap
        assert 0 <= delay <= min(16.0, 0.5 * 2 ** (attempt - 1))


def test_jitter_spreads_the_delays(no_sleep):
    def down():
        raise _HttpError(503)

    with pytest.raises(StorageError):
        retry(down, "x", seconds=200, max_delay=4.0)
    assert len(no_sleep) > 40 and sum(no_sleep) <= 200
    assert len({round(d, 6) for d in no_sleep}) > 30  # not one fixed schedule: hosts retrying together spread out


def test_a_fault_that_outlasts_the_bound_is_one_line_naming_the_path(no_sleep, monkeypatch):
    monkeypatch.setenv(storage.RETRY_SECONDS_ENV, "30")

    def down():
        raise _HttpError(503)

    with pytest.raises(StorageError) as e:
        retry(down, "upload gs://bucket/run/metrics.jsonl")
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg
    assert msg.startswith("upload gs://bucket/run/metrics.jsonl: failed") and "HTTP 503" in msg
    assert sum(no_sleep) <= 30  # within the bound
    assert len(no_sleep) >= 4


@pytest.mark.parametrize("error", [FileNotFoundError("gs://b/x"), PermissionError("denied"), ValueError("bad"),
                                   _HttpError(404), _HttpError(403), _HttpError(412),
                                   OSError(errno.ENOSPC, "No space left")])
def test_errors_that_are_not_transient_are_raised_at_once(no_sleep, error):
    calls = []

    def broken():
        calls.append(1)
        raise error

    with pytest.raises(type(error)) as e:
        retry(broken, "x")
    assert e.value is error and len(calls) == 1 and not no_sleep


def test_transient_detection_follows_the_exception_chain_but_never_retries_a_given_up_error():
    try:
        try:
            raise ConnectionResetError("peer")
        except ConnectionResetError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    gave_up = StorageError("upload x: failed 5 time(s)")
    gave_up.__cause__ = _HttpError(503)
    assert not is_transient(gave_up)  # an outer retry must not multiply the bound
    assert not is_transient(_HttpError(404))


def test_the_bound_also_sizes_tensorstores_retries(monkeypatch):
    monkeypatch.delenv(storage.RETRY_SECONDS_ENV, raising=False)
    assert storage.tensorstore_retry_context() is None  # unset: tensorstore keeps its own (32 retries)
    monkeypatch.setenv(storage.RETRY_SECONDS_ENV, "10")
    assert storage.tensorstore_retry_context() == {"max_retries": 3, "initial_delay": "1s", "max_delay": "32s"}
    monkeypatch.setenv(storage.RETRY_SECONDS_ENV, "ten")
    with pytest.raises(StorageError, match="BSFT_STORAGE_RETRY_SECONDS='ten' is not a number"):
        storage.retry_seconds()


def test_append_log_keeps_lines_when_a_periodic_upload_fails(monkeypatch):
    """A periodic upload that fails is logged; the lines go with the next upload; close() raises."""
    uploads, fail = [], [True]

    class FakePath:
        def write_bytes(self, data):
            if fail[0]:
                raise _HttpError(503)
            uploads.append(data)

        def is_file(self):
            return False

    monkeypatch.setattr(storage, "_epath", lambda path: FakePath())
    monkeypatch.setenv(storage.RETRY_SECONDS_ENV, "0")
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    log = storage.AppendLog("gs://b/run/metrics.jsonl", upload_every=0.0)
    log.write("a\n")  # periodic upload fails: kept, no exception
    log.write("b\n")
    with pytest.raises(StorageError, match="upload gs://b/run/metrics.jsonl"):
        log.close()
    fail[0] = False
    log.close()
    assert uploads == [b"a\nb\n"]


# ----------------------------------------------------------------------------- through the fault proxy
def _clear_gcs_clients() -> None:
    """gcsfs and etils keep their file-system objects (with the endpoint they were made with): drop them."""
    import gcsfs
    from etils.epath import backend

    gcsfs.GCSFileSystem.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()


@pytest.fixture
def faulty(gcs_server, monkeypatch):  # noqa: F811
    """(proxy, gs:// prefix): every client of this process goes through a fault proxy in front of the emulator."""
    url, _ = gcs_server
    with FaultProxy(url, fraction=0.0, faults=("503", "drop", "drop_after"), seed=3) as proxy:
        for k, v in emulator_env(proxy.url).items():
            monkeypatch.setenv(k, v)
        _clear_gcs_clients()
        try:
            yield proxy, f"gs://test-bucket/faulty-{os.urandom(4).hex()}"
        finally:
            proxy.fraction = 0.0
    _clear_gcs_clients()


def test_storage_operations_complete_through_a_failing_bucket(faulty):
    """A quarter of the requests fail (503, dropped before or after the bucket applied them): uploads,
    downloads, ranged reads, listings, copies, folder commits and the metrics log all complete, intact."""
    proxy, base = faulty
    payload = os.urandom(300_000)
    storage.write_bytes(storage.join(base, "w", "a.bin"), b"seed")
    proxy.fraction = 0.25
    storage.write_bytes(storage.join(base, "w", "a.bin"), payload)
    with storage.open_file(storage.join(base, "w", "a.bin"), "rb") as f:
        assert storage.read_range(f, 1000, 251_000) == payload[1000:251_000]
    storage.copy_file(storage.join(base, "w", "a.bin"), storage.join(base, "stage", "model.bin"))
    storage.write_bytes(storage.join(base, "stage", "config.json"), b'{"x": 1}')
    storage.commit_dir(storage.join(base, "stage"), storage.join(base, "final"))
    assert storage.walk_files(storage.join(base, "final")) == ["config.json", "model.bin"]
    assert storage.read_text(storage.join(base, "final", "config.json")) == '{"x": 1}'
    log = storage.AppendLog(storage.join(base, "metrics.jsonl"), upload_every=0.0)
    for i in range(5):
        log.write(f"{i}\n")
    log.close()
    proxy.fraction = 0.0
    assert storage.read_text(storage.join(base, "metrics.jsonl")) == "".join(f"{i}\n" for i in range(5))
    with storage.open_file(storage.join(base, "final", "model.bin"), "rb") as f:
        assert f.read() == payload
    assert not storage.exists(storage.join(base, "stage"))
    assert sum(proxy.counts[k] for k in ("503", "drop", "drop_after")) > 0, proxy.counts


def test_a_bucket_that_stays_down_is_one_line_within_the_bound(faulty, monkeypatch):
    proxy, base = faulty
    monkeypatch.setenv(storage.RETRY_SECONDS_ENV, "1")
    proxy.fraction = 1.0
    with pytest.raises(StorageError) as e:
        storage.write_bytes(storage.join(base, "metrics.jsonl"), b"x\n")
    assert "\n" not in str(e.value) and f"upload {base}/metrics.jsonl: failed" in str(e.value)


def test_safetensors_written_to_a_failing_bucket_are_whole(faulty):
    """An export's weights file: a failed streamed upload leaves no object, so it is written again whole."""
    from bsft_jax.models import safetensors_io

    proxy, base = faulty
    arrays = {f"t{i}": np.random.default_rng(i).standard_normal((64, 128)).astype(np.float32) for i in range(4)}
    tensors = [safetensors_io.PendingTensor(k, v.shape, v.dtype, lambda v=v: v) for k, v in arrays.items()]
    path = storage.join(base, "model.safetensors")
    proxy.fraction = 0.25
    safetensors_io.write_file(path, tensors)
    proxy.fraction = 0.0
    from safetensors.numpy import load

    with storage.open_file(path, "rb") as f:
        loaded = load(f.read())
    for k, v in arrays.items():
        np.testing.assert_array_equal(loaded[k], v)


def test_the_gs_lease_rides_out_faults_but_a_lost_precondition_is_an_answer(faulty, monkeypatch):
    """The lease's google-cloud-storage calls through the same faults: taking, renewing and giving back the lease
    complete (a conditional write that landed but whose answer was dropped is recognised by its token, and a
    renewal whose retries ran out after it landed does not strand the lease at release). A generation-precondition
    failure (412: another trainer holds it) is an answer, not a fault: the second trainer is refused at once,
    not after the retry bound."""
    from google.api_core import exceptions as gexc
    from google.cloud.storage.retry import DEFAULT_RETRY

    from bsft_jax.checkpoint.lease import LEASE_FILE, RunDirBusyError, RunLease
    from bsft_jax.setup.settings import LeaseSettings

    lost_race = gexc.PreconditionFailed("conditionNotMet")
    assert not is_transient(lost_race) and not DEFAULT_RETRY._predicate(lost_race)  # neither retry layer
    proxy, base = faulty
    run_dir, settings = f"{base}/run", LeaseSettings(expiry_seconds=3.0)  # renewed every 0.5 s
    proxy.fraction = 0.3
    lease = RunLease(run_dir, settings).acquire()
    started = json.loads(storage.read_text(storage.join(run_dir, LEASE_FILE)))["heartbeat"]
    time.sleep(3)  # renewals through the faults
    holder = json.loads(storage.read_text(storage.join(run_dir, LEASE_FILE)))
    assert holder["token"] == lease.token and holder["heartbeat"] > started and not lease.lost.is_set()
    assert sum(proxy.counts[k] for k in ("503", "drop", "drop_after")) > 0, proxy.counts
    proxy.fraction = 0.0
    monkeypatch.setenv(storage.RETRY_SECONDS_ENV, "120")
    t0 = time.monotonic()
    with pytest.raises(RunDirBusyError, match=f"pid {os.getpid()}"):
        RunLease(run_dir, settings).acquire()
    assert time.monotonic() - t0 < 10  # a retried 412 would take the whole 120 s
    lease._stop.set()
    lease._thread.join()  # no renewal from here on to set it right
    lease._version = 1  # as after a renewal that landed while its answer was lost for good
    lease.release()
    assert not storage.exists(storage.join(run_dir, LEASE_FILE))
