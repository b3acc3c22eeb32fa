"""A 2-process job (launch/local.py, 2 x 2 fake CPU devices) dies whole when one process is killed with -9,
and its restart ends bit for bit where an uninterrupted run ends: bench/multihost_soak.py at test size.

The survivor must exit non-zero on its own within 2 x distributed.peer_timeout_seconds + slack (JAX's
heartbeat; nothing else stops it), after each of 2 kills at random points; the final weights and every
logged step's loss and batch fingerprint equal the uninterrupted run's. The 10-kill soak is
``python -m bench.multihost_soak`` (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import signal

from bench import multihost_soak
from bsft_jax.train.distributed import EXIT_PEER_LOST


def test_a_killed_process_ends_the_job_and_the_restart_resumes_bitwise(tmp_path):
    results = str(tmp_path / "results.jsonl")
    r = multihost_soak.main(["--kills", "2", "--steps", "30", "--every", "2", "--max_delay", "0.3",
                             "--peer_timeout", "15", "--seed", "1", "--work", str(tmp_path / "soak"),
                             "--results", results])
    assert r["kills"] == 2, r
    for kill in r["per_kill"]:
        assert kill["survivor_exit"] not in (None, 0), kill  # exited, and not as a success
        if kill["victim"] != 0:  # the watchdog's verdict: one error line and the retry status
            assert kill["survivor_exit"] == EXIT_PEER_LOST, kill
            assert kill["survivor_last_line"].startswith("error: process 0 of 2: process 1 "), kill
        else:  # the coordinator gone: JAX's client aborts at once (SIGABRT), before any watchdog could speak
            assert kill["survivor_exit"] in (EXIT_PEER_LOST, -signal.SIGABRT), kill
        assert kill["seconds_to_exit"] <= r["bound_seconds"], kill
    assert {kill["victim"] for kill in r["per_kill"]} == {0, 1}, r  # seed 1 kills each process once
    assert r["missing_steps"] == [] and r["loss_mismatched_steps"] == [], r
    assert r["weight_arrays"] > 0 and r["weight_arrays_different"] == 0, r
    assert r["bitwise_equal"] and r["all_within_bound"]
    with open(results) as f:
        record = json.loads(f.read())
    assert record["bench"] == "multihost_soak" and record["config"]["command"].startswith("python -m bench.")
