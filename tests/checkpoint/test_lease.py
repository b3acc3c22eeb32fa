"""The run-directory lease in this process: one trainer per run directory.

A second holder is refused naming the first; the heartbeat keeps a live holder; racing threads end with
exactly one winner; a forced take-over stops the displaced holder at its next renewal. The cases that
need another process (a holder killed with -9, racing processes, exit on loss) or the GCS emulator are in
tests/integration/test_lease.py.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import pytest

from bsft_jax.checkpoint.lease import LEASE_FILE, Holder, RunDirBusyError, RunLease, take_run_lease
from bsft_jax.errors import UserError
from bsft_jax.setup.settings import ConfigError, LeaseSettings

FAST = LeaseSettings(expiry_seconds=1.2)  # renewals every 0.2 s


def _holder_of(run_dir: str) -> dict:
    with open(os.path.join(run_dir, LEASE_FILE)) as f:
        return json.load(f)


def test_a_second_holder_is_refused_naming_the_first_until_it_releases(tmp_path):
    run_dir = str(tmp_path / "run")
    first = RunLease(run_dir, FAST).acquire()
    held = _holder_of(run_dir)
    assert held["pid"] == os.getpid() and held["host"] and held["started"] <= held["heartbeat"]
    with pytest.raises(RunDirBusyError) as e:
        RunLease(run_dir, FAST).acquire()
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg
    assert f"pid {os.getpid()}" in msg and "last alive" in msg and "force_takeover" in msg and run_dir in msg
    first.release()
    assert not os.path.exists(os.path.join(run_dir, LEASE_FILE))
    with RunLease(run_dir, FAST) as second:
        assert second.held
    assert not os.path.exists(os.path.join(run_dir, LEASE_FILE))


def test_heartbeat_keeps_a_live_holder_past_its_expiry(tmp_path):
    run_dir = str(tmp_path / "run")
    with RunLease(run_dir, FAST):
        beat = _holder_of(run_dir)["heartbeat"]
        time.sleep(FAST.expiry_seconds * 1.5)
        assert _holder_of(run_dir)["heartbeat"] > beat
        with pytest.raises(RunDirBusyError):
            RunLease(run_dir, FAST).acquire()


def test_a_torn_lease_file_waits_for_the_expiry(tmp_path):
    """A lease file left empty (its creator died between open and write) is judged by its modification time."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LEASE_FILE).write_bytes(b"")
    with pytest.raises(RunDirBusyError):
        RunLease(str(run_dir), FAST).acquire()
    old = time.time() - 10
    os.utime(run_dir / LEASE_FILE, (old, old))
    with RunLease(str(run_dir), FAST):
        assert _holder_of(str(run_dir))["pid"] == os.getpid()


def test_force_takeover_wins_and_the_displaced_holder_stops(tmp_path, caplog):
    run_dir = str(tmp_path / "run")
    lost = []
    first = RunLease(run_dir, FAST, on_lost=lost.append).acquire()
    with caplog.at_level(logging.WARNING, logger="bsft_jax.checkpoint.lease"):
        second = RunLease(run_dir, LeaseSettings(expiry_seconds=1.2, force_takeover=True)).acquire()
    assert "config.lease.force_takeover: taking over" in caplog.text
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lost and "taken over by" in lost[0] and not first.held
    first.release()  # must not remove the new holder's lease
    assert _holder_of(run_dir)["token"] == second.token
    second.release()


def _race(run_dir: str, takers: int) -> RunLease:
    """``takers`` threads released at once by a barrier try to take the lease: the one winner's lease."""
    barrier = threading.Barrier(takers)
    won, busy = [], []

    def take():
        barrier.wait()
        try:
            won.append(RunLease(run_dir, LeaseSettings(expiry_seconds=60)).acquire())
        except RunDirBusyError:
            busy.append(1)

    threads = [threading.Thread(target=take) for _ in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(busy) == takers - 1, (len(won), len(busy))
    return won[0]


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale_holder"])
def test_racing_threads_exactly_one_wins(tmp_path, stale):
    """Eight takers released at once by a barrier, 10 rounds: on an empty run directory, and on one whose
    holder is expired (every taker tries the same take-over)."""
    for round_ in range(10):
        run_dir = tmp_path / f"run{round_}"
        if stale:
            run_dir.mkdir()
            old = time.time() - 100
            (run_dir / LEASE_FILE).write_bytes(Holder(token="dead", host="gone-host", pid=1, started=old,
                                                      heartbeat=old, expiry_seconds=5.0).to_bytes())
        won = _race(str(run_dir), takers=8)
        assert _holder_of(str(run_dir))["token"] == won.token, round_
        won.release()


def test_only_the_primary_takes_it_and_the_others_learn_its_failure(tmp_path):
    run_dir = str(tmp_path / "run")
    with take_run_lease(run_dir, FAST, primary=False) as lease:
        assert lease is None and not os.path.exists(run_dir)
    with take_run_lease(run_dir, FAST, primary=True) as lease:
        assert lease.held
        with pytest.raises(RunDirBusyError, match="in use by another trainer"):
            with take_run_lease(run_dir, FAST, primary=True):
                pass
        # a non-primary process of a job whose process 0 was refused stops too, with a line saying so
        with pytest.raises(RunDirBusyError, match="process 0 could not take"):
            with take_run_lease(run_dir, FAST, primary=False, all_agree=lambda ok: False):
                pass
    assert not os.path.exists(os.path.join(run_dir, LEASE_FILE))


def test_lease_settings_are_checked():
    with pytest.raises(ConfigError, match="config.lease.expiry_seconds: must be > 0"):
        LeaseSettings(expiry_seconds=0)
    assert LeaseSettings(expiry_seconds=60).heartbeat_seconds == 10

