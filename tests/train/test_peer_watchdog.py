"""PeerWatchdog's verdicts on a fake key-value store (multi-process: tests/multihost/test_multihost_soak.py)."""

from __future__ import annotations

import threading

import pytest

from bsft_jax.train import distributed


class FakeStore:
    """The two calls the watchdog makes on a jax.distributed client, over a dict."""

    def __init__(self) -> None:
        self.kv: dict[str, str] = {}
        self.broken = False

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
        if self.broken:
            raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
        self.kv[key] = value

    def key_value_try_get(self, key: str) -> str:
        if self.broken:
            raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
        if key not in self.kv:
            raise RuntimeError(f"NOT_FOUND: Config key {key} not found")
        return self.kv[key]


@pytest.fixture
def verdicts(monkeypatch):
    """peer_lost records its reason (the watchdog thread then ends) instead of ending the process."""
    got: list[str] = []
    done = threading.Event()

    def lost(reason: str) -> None:
        got.append(reason)
        done.set()

    monkeypatch.setattr(distributed, "peer_lost", lost)
    return got, done


def _beating(store: FakeStore, process: int, stop: threading.Event) -> threading.Thread:
    """A live peer: bumps its counter every 10 ms."""
    def beat() -> None:
        n = 0
        while not stop.wait(0.01):
            n += 1
            store.key_value_set(f"{distributed._KEY}/alive/{process}", str(n), allow_overwrite=True)
    t = threading.Thread(target=beat, daemon=True)
    t.start()
    return t


def test_a_silent_peer_is_lost_and_a_live_one_is_not(verdicts):
    got, done = verdicts
    store, stop = FakeStore(), threading.Event()
    _beating(store, 1, stop)  # process 1 beats, process 2 never does
    dog = distributed.PeerWatchdog(store, 0, 3, timeout=1.0).start()
    assert done.wait(5.0)
    stop.set()
    assert len(got) == 1 and got[0].startswith("process 2 has not been heard from"), got
    assert store.kv[f"{distributed._KEY}/alive/0"]  # it beat itself
    dog.finish()


def test_a_peer_that_finished_is_not_lost_and_finish_marks_done(verdicts):
    got, done = verdicts
    store, stop = FakeStore(), threading.Event()
    _beating(store, 1, stop)
    store.kv[f"{distributed._KEY}/done/2"] = "1"  # process 2 exited normally
    dog = distributed.PeerWatchdog(store, 0, 3, timeout=0.5).start()
    assert not done.wait(1.0), got  # two limits: no verdict
    dog.finish()
    stop.set()
    assert store.kv[f"{distributed._KEY}/done/0"] == "1"


def test_a_store_that_stops_answering_is_the_coordinator_lost(verdicts):
    got, done = verdicts
    store = FakeStore()
    distributed.PeerWatchdog(store, 1, 2, timeout=2.0).start()
    store.broken = True
    assert done.wait(5.0)
    assert got[0].startswith("the job's coordination service does not answer (UNAVAILABLE"), got
