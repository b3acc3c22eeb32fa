"""Training and export on a bucket that fails: a fault-injecting proxy in front of the local GCS emulator.

* A fraction of every request (checkpoint arrays through tensorstore, metadata, metrics and the lease
  through gcsfs and google-cloud-storage, the export's files) gets a 503 or a dropped connection. A run
  with periodic saves and its export complete with bitwise the weights, and byte-identical export files,
  of the same run on local disk without faults.
* At 100% failure from step 3 on, the run ends with one line (exit 2) naming the failed save and the
  last good step, which is intact: the same run resumes from it once the bucket answers again.
* A local disk that fills up during a save: one line naming the folder; the previous step is intact
  and the run resumes from it (a tiny tmpfs where this machine lets a test mount one, and a
  monkeypatched write everywhere).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bsft_jax import storage
from bsft_jax.checkpoint.layout import CheckpointError
from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.checkpoint.read import load_params
from bsft_jax.train.loop import run
from tests.train.common import tiny_config

from .fault_proxy import FaultProxy
from .gcs_emulator import emulator_env, gcs_server  # noqa: F401  (pytest fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 10% of requests fail. 20% passes too, but tensorstore and gcsfs back off 1-2 s per failed request, so the
# run takes half as long again (measured on a loaded 2-core machine: 285 s at 10%, 420 s at 20%).
FAULT_FRACTION = 0.1

# Trains (and exports) with the environment pointing at the proxy; at step ``flip_step`` every request
# starts to fail. argv: a JSON object of arguments.
_RUN = """
import json, sys
from bsft_jax.errors import cli_boundary
from bsft_jax.export import export_checkpoint
from bsft_jax.train.loop import run
from tests.integration.fault_proxy import set_remote_fraction
from tests.train.common import tiny_config
a = json.loads(sys.argv[1])
def on_step(step, _metrics):
    if step == a.get("flip_step"):
        set_remote_fraction(a["proxy"], 1.0)
def work():
    run(tiny_config(a["run_dir"], a["tok"], **a["overrides"]), on_step=on_step)
    if a.get("export_to"):
        export_checkpoint(a["run_dir"], a["export_to"])
sys.exit(cli_boundary(work))
"""


def _run_through(proxy: FaultProxy, timeout: float = 1500, **args) -> subprocess.CompletedProcess:
    env = dict(os.environ, **emulator_env(proxy.url), PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               JAX_NUM_CPU_DEVICES="1", BSFT_STORAGE_RETRY_SECONDS=str(args.pop("retry_seconds", 60)))
    return subprocess.run([sys.executable, "-c", _RUN, json.dumps(dict(args, proxy=proxy.url))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _params(run_dir: str, step: int | None = None) -> list[np.ndarray]:
    from flax import nnx

    model, _, _ = load_params(run_dir, step)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_run_and_its_export_complete_through_a_failing_bucket(gcs_server, tmp_path):  # noqa: F811
    from bsft_jax.export import export_checkpoint

    url, _ = gcs_server
    tok = str(tmp_path / "tok")
    local = str(tmp_path / "local")
    run(tiny_config(local, tok), devices=jax.devices()[:1])
    export_checkpoint(local, str(tmp_path / "local_hf"))
    remote, remote_hf = "gs://test-bucket/faulty_run/run", "gs://test-bucket/faulty_run/hf"
    with FaultProxy(url, fraction=FAULT_FRACTION, faults=("503", "drop", "drop_after"), seed=7) as proxy:
        out = _run_through(proxy, run_dir=remote, tok=tok, overrides={"lease.expiry_seconds": 30.0},
                           export_to=remote_hf)
        counts = dict(proxy.counts)
    assert out.returncode == 0, out.stderr[-4000:]
    injected = sum(counts[k] for k in ("503", "drop", "drop_after"))
    assert injected > 20 and injected / (injected + counts["forwarded"]) > FAULT_FRACTION / 2, counts
    assert Checkpointer(remote).all_steps() == [2, 4, 6]
    for a, b in zip(_params(local), _params(remote), strict=True):
        np.testing.assert_array_equal(a, b)
    for name in storage.walk_files(str(tmp_path / "local_hf")):
        with open(tmp_path / "local_hf" / name, "rb") as f:
            want = f.read()
        with storage.open_file(storage.join(remote_hf, name), "rb") as f:
            assert f.read() == want, name
    records = storage.read_text(storage.join(remote, "metrics.jsonl")).splitlines()
    assert [json.loads(r)["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert not storage.exists(storage.join(remote, "lease.json"))


def test_a_bucket_down_for_good_ends_in_one_line_with_the_last_good_step_intact(gcs_server, tmp_path):  # noqa: F811
    url, _ = gcs_server
    tok = str(tmp_path / "tok")
    remote = "gs://test-bucket/down_run/run"
    overrides = {"checkpoint.async_save": False, "lease.expiry_seconds": 12.0}
    with FaultProxy(url, fraction=0.0, faults=("503", "drop"), seed=1) as proxy:
        out = _run_through(proxy, run_dir=remote, tok=tok, overrides=overrides, flip_step=3, retry_seconds=3)
    assert out.returncode == 2, out.stderr[-4000:]
    errors = _errors(out.stderr)
    assert len(errors) == 1, out.stderr[-4000:]
    assert "saving step 4 to gs://test-bucket/down_run/run/checkpoints failed" in errors[0], errors[0]
    assert "step 2 is intact and a rerun resumes from it" in errors[0], errors[0]
    assert Checkpointer(remote).all_steps() == [2]
    resumed = run(tiny_config(remote, tok, **overrides), devices=jax.devices()[:1])  # the bucket answers again
    assert resumed.start_step == 2 and resumed.final_step == 6


def _fill(folder: str) -> None:
    """Fills the file system of ``folder`` to the last byte."""
    fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
    chunk = b"\0" * 65536
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MiB tmpfs, where this machine lets the test mount one (root in a container); else skipped."""
    mount = tmp_path / "disk"
    mount.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.decode().strip()[:100]}); the monkeypatched test "
                    "covers the full disk")
    try:
        yield str(mount)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_during_a_save_is_one_line_and_the_previous_step_is_intact(tiny_disk, tmp_path):
    run_dir = os.path.join(tiny_disk, "run")
    tok = str(tmp_path / "tok")

    def fill_after_step_2(step, _metrics):
        if step == 3:
            _fill(tiny_disk)

    cfg = tiny_config(run_dir, tok, **{"checkpoint.async_save": False})
    with pytest.raises(CheckpointError) as e:
        run(cfg, devices=jax.devices()[:1], on_step=fill_after_step_2)
    msg = str(e.value)
    assert "\n" not in msg and f"no space left on the device of {run_dir}/checkpoints while saving step 4" in msg
    assert "step 2 is intact" in msg
    os.remove(os.path.join(tiny_disk, "filler"))
    assert Checkpointer(run_dir).all_steps() == [2]
    resumed = run(cfg, devices=jax.devices()[:1])
    assert resumed.start_step == 2 and resumed.final_step == 6


def test_a_full_disk_simulated_during_a_save(tmp_path, monkeypatch):
    """The same without a mount: writing step 4's JSON items fails with ENOSPC, as on a full disk. The save
    is asynchronous, so the failure surfaces when step 6's save waits for it."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh

    run_dir, tok = str(tmp_path / "run"), str(tmp_path / "tok")
    real_save_fn = jh.JsonCheckpointHandler._save_fn

    async def save_fn(self, x, directory):
        if os.path.basename(os.path.dirname(str(directory))).startswith("4."):  # checkpoints/4.orbax-...-tmp/meta
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return await real_save_fn(self, x, directory)

    cfg = tiny_config(run_dir, tok)
    monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", save_fn)
    with pytest.raises(CheckpointError, match=r"no space left on the device of .*/checkpoints while saving step 4; "
                                              r"step 2 is intact and a rerun resumes from it"):
        run(cfg, devices=jax.devices()[:1])
    monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", real_save_fn)
    assert Checkpointer(run_dir).all_steps() == [2]
    resumed = run(cfg, devices=jax.devices()[:1])
    assert resumed.start_step == 2 and resumed.final_step == 6


def test_metrics_lines_wait_in_memory_while_the_disk_is_full(tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.jsonl")
    log = storage.AppendLog(path)
    log.write('{"step": 1}\n')
    real_write, full = os.write, [True]

    def write(fd, data):
        if full[0] and fd == log._fd:
            real_write(fd, bytes(data)[:3])  # a short write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    log.write('{"step": 2}\n')  # kept, no exception: training goes on until its save names the problem
    log.write('{"step": 3}\n')
    with open(path) as f:
        assert f.read() == '{"step": 1}\n'  # never half a line
    with pytest.raises(storage.StorageError, match=r"metrics.jsonl: no space left on its device; 2 line"):
        log.flush()
    full[0] = False
    log.write('{"step": 4}\n')
    log.close()
    with open(path) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]
