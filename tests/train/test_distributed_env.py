"""When and how jax.distributed is initialised, from the config and the environment."""

import jax
import pytest

from bsft_jax.setup.settings import DistributedSettings
from bsft_jax.train import distributed


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS", "BSFT_LOCAL_DEVICE_IDS"):
        monkeypatch.delenv(var, raising=False)
    return seen


def cfg(**kw):
    base = dict(initialize="auto", coordinator_address="", num_processes=-1, process_id=-1)
    return DistributedSettings(**{**base, **kw})


def test_single_process_environment_does_not_initialise(calls):
    assert distributed.maybe_initialize(cfg()) is False and calls == []


def test_slurm_per_host_passes_the_local_gpus(calls, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("BSFT_LOCAL_DEVICE_IDS", "0,1,2,3")
    assert distributed.maybe_initialize(cfg()) is True
    assert calls == [{"local_device_ids": [0, 1, 2, 3], "heartbeat_timeout_seconds": 60}]


def test_explicit_coordinator_from_config(calls):
    distributed.maybe_initialize(cfg(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1))
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1,
                      "heartbeat_timeout_seconds": 60}]


def test_peer_timeout_is_jax_heartbeat_timeout(calls, monkeypatch):
    """distributed.peer_timeout_seconds bounds how long the others wait on a dead process (the soak in
    tests/multihost/test_multihost_soak.py measures it on a real 2-process job)."""
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    distributed.maybe_initialize(cfg(peer_timeout_seconds=7))
    assert calls == [{"heartbeat_timeout_seconds": 7}]


def test_peer_timeout_must_be_positive():
    from bsft_jax.setup.settings import ConfigError

    with pytest.raises(ConfigError, match="config.distributed.peer_timeout_seconds: must be > 0"):
        cfg(peer_timeout_seconds=0)


def test_bad_local_device_ids_are_named(calls, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("BSFT_LOCAL_DEVICE_IDS", "0,x")
    with pytest.raises(ValueError, match="BSFT_LOCAL_DEVICE_IDS"):
        distributed.maybe_initialize(cfg())
