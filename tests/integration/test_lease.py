"""The run-directory lease across processes and on a bucket (the GCS emulator); the in-process cases are in
tests/checkpoint/test_lease.py.

A holder killed with -9 is taken over at once on its own host and after its expiry elsewhere; racing
processes end with exactly one winner; a displaced holder exits with one line; on gs:// a second holder
is refused and racing threads end with exactly one winner.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from bsft_jax.checkpoint import lease as lease_mod
from bsft_jax.checkpoint.lease import LEASE_FILE, Holder, RunDirBusyError, RunLease, gone_reason
from bsft_jax.setup.settings import LeaseSettings
from tests.checkpoint.test_lease import FAST, _holder_of, _race

from .gcs_emulator import gcs_bucket, gcs_server  # noqa: F401  (pytest fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A holder in another process: takes the lease, says so, then waits to be killed. argv: run_dir, expiry, host
_HOLDER = """
import sys, time
from bsft_jax.checkpoint import lease
from bsft_jax.setup.settings import LeaseSettings
if sys.argv[3]:
    lease._this_host = lambda: sys.argv[3]  # a holder on another machine: its pid cannot be checked from here
lease.RunLease(sys.argv[1], LeaseSettings(expiry_seconds=float(sys.argv[2]))).acquire()
print("held", flush=True)
time.sleep(600)
"""

# A racer: says it is ready, reads a shared start time from stdin, spins until then, tries once, prints
# won / busy. argv: run_dir
_RACER = """
import sys, time
from bsft_jax.checkpoint.lease import RunLease, RunDirBusyError
from bsft_jax.setup.settings import LeaseSettings
print("ready", flush=True)
start = float(sys.stdin.readline())
while time.time() < start:
    pass
try:
    RunLease(sys.argv[1], LeaseSettings(expiry_seconds=60)).acquire()
    print("won", flush=True)
    time.sleep(3)
except RunDirBusyError:
    print("busy", flush=True)
"""


def _env(extra: dict | None = None) -> dict:
    return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **(extra or {}))


def _start_holder(run_dir: str, expiry: float, host: str = "", env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, run_dir, str(expiry), host], env=_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "held", line + proc.stdout.read()[-2000:]
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def test_a_killed_holder_on_this_host_is_taken_over_at_once(tmp_path, caplog):
    run_dir = str(tmp_path / "run")
    proc = _start_holder(run_dir, expiry=600)
    with pytest.raises(RunDirBusyError, match=f"pid {proc.pid}"):
        RunLease(run_dir, FAST).acquire()
    _kill(proc)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="bsft_jax.checkpoint.lease"), RunLease(run_dir, FAST):
        assert time.monotonic() - t0 < 2  # not the 600 s expiry
        assert _holder_of(run_dir)["pid"] == os.getpid()
    assert f"its process {proc.pid} on this host no longer exists" in caplog.text


def test_a_zombie_or_reused_pid_counts_as_gone(tmp_path):
    now = time.time()
    me = dict(host=lease_mod._this_host(), machine=lease_mod._machine(), started=now, heartbeat=now,
              expiry_seconds=600.0, token="t")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while lease_mod._read_state(child.pid) != "Z" and time.monotonic() < deadline:  # exited, not reaped yet
        time.sleep(0.05)
    assert "no longer exists" in gone_reason(Holder(pid=child.pid, **me), now, 600)
    child.wait()
    reused = Holder(pid=os.getpid(), process_start="1", **me)  # this pid, but a process that started earlier
    assert "no longer exists" in gone_reason(reused, now, 600)
    assert gone_reason(Holder(pid=os.getpid(), process_start=lease_mod._process_start(os.getpid()), **me), now,
                       600) is None
    elsewhere = Holder(pid=999_999_999, **{**me, "host": "another-host"})  # a pid of another host proves nothing
    assert gone_reason(elsewhere, now, 600) is None


def test_a_holder_on_another_host_is_taken_over_only_after_its_expiry(tmp_path):
    run_dir = str(tmp_path / "run")
    proc = _start_holder(run_dir, expiry=2.0, host="another-host")
    _kill(proc)
    with pytest.raises(RunDirBusyError, match="another-host"):
        RunLease(run_dir, FAST).acquire()
    time.sleep(2.2)
    with RunLease(run_dir, FAST):
        assert _holder_of(run_dir)["host"] != "another-host"


def test_exit_on_lost_ends_the_process_with_one_line(tmp_path):
    """The trainer's policy: a displaced holder exits at once (status 3) instead of writing on."""
    code = ("import sys, time\n"
            "from bsft_jax.checkpoint.lease import RunLease, exit_on_lost\n"
            "from bsft_jax.setup.settings import LeaseSettings\n"
            "RunLease(sys.argv[1], LeaseSettings(expiry_seconds=0.6), on_lost=exit_on_lost).acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n")
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", code, run_dir], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    RunLease(run_dir, LeaseSettings(expiry_seconds=0.6, force_takeover=True)).acquire().release()
    assert proc.wait(timeout=30) == lease_mod.LEASE_LOST_EXIT
    errors = [line for line in proc.stderr.read().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "taken over" in errors[0]


def test_racing_processes_exactly_one_wins(tmp_path):
    run_dir = str(tmp_path / "run")
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, run_dir], env=_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    start = f"{time.time() + 0.5}\n"  # the same instant for all four, after every one has started
    for p in procs:
        p.stdin.write(start)
        p.stdin.flush()
    outs = [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs]
    assert sorted(outs) == ["busy", "busy", "busy", "won"], outs


# ----------------------------------------------------------------------------- gs://
def _gs_holder(url: str) -> dict:
    from bsft_jax import storage

    return json.loads(storage.read_text(storage.join(url, LEASE_FILE)))


def test_gs_second_holder_refused_then_released(gcs_bucket):  # noqa: F811
    from bsft_jax import storage

    run_dir = f"{gcs_bucket}/run"
    first = RunLease(run_dir, FAST).acquire()
    beat = _gs_holder(run_dir)["heartbeat"]
    with pytest.raises(RunDirBusyError, match=f"pid {os.getpid()}.*last alive"):
        RunLease(run_dir, FAST).acquire()
    time.sleep(0.6)
    assert _gs_holder(run_dir)["heartbeat"] > beat  # renewed with a generation match
    first.release()
    assert not storage.exists(storage.join(run_dir, LEASE_FILE))
    with RunLease(run_dir, FAST):
        pass


def test_gs_killed_holder_elsewhere_lapses_after_its_expiry(gcs_server, gcs_bucket):  # noqa: F811
    _, env = gcs_server
    run_dir = f"{gcs_bucket}/run"
    proc = _start_holder(run_dir, expiry=3.0, host="another-host", env=env)
    _kill(proc)
    killed = time.monotonic()
    with pytest.raises(RunDirBusyError, match="another-host"):
        RunLease(run_dir, FAST).acquire()
    while True:
        try:
            lease = RunLease(run_dir, FAST).acquire()
            break
        except RunDirBusyError:
            assert time.monotonic() - killed < 30
            time.sleep(0.2)
    waited = time.monotonic() - killed
    assert 1.5 < waited < 30, waited  # after the expiry (3 s after the last renewal), not at once
    lease.release()


def test_gs_killed_holder_on_this_host_is_taken_over_at_once(gcs_server, gcs_bucket):  # noqa: F811
    _, env = gcs_server
    run_dir = f"{gcs_bucket}/run"
    proc = _start_holder(run_dir, expiry=600, env=env)
    _kill(proc)
    with RunLease(run_dir, FAST):
        assert _gs_holder(run_dir)["pid"] == os.getpid()


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale_holder"])
def test_gs_racing_threads_exactly_one_wins(gcs_bucket, stale):  # noqa: F811
    from bsft_jax import storage

    for round_ in range(3):
        run_dir = f"{gcs_bucket}/race{round_}"
        if stale:
            old = time.time() - 100
            storage.write_bytes(storage.join(run_dir, LEASE_FILE), Holder(
                token="dead", host="gone-host", pid=1, started=old, heartbeat=old, expiry_seconds=5.0).to_bytes())
        won = _race(run_dir, takers=6)
        assert _gs_holder(run_dir)["token"] == won.token, round_
        won.release()
