"""gs:// paths against a real GCS-compatible server on localhost (tests/integration/gcs_emulator.py).

The storage layer itself (atomic single-object writes, append log, folder commit) and
``load_hf`` streaming a model from a bucket prefix, one ranged read per tensor.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from bsft_jax import storage
from bsft_jax.files import atomic_write, write_json
from bsft_jax.models import safetensors_io
from bsft_jax.models.hf import load_hf
from tests.helpers import save_tiny

from .gcs_emulator import gcs_bucket, gcs_server  # noqa: F401  (pytest fixtures)


def test_atomic_write_uploads_only_a_finished_file(gcs_bucket):  # noqa: F811
    path = storage.join(gcs_bucket, "a", "x.json")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert not storage.exists(path)  # an aborted write leaves no object
    write_json(path, {"k": 1})
    assert storage.read_text(path) == '{\n  "k": 1\n}\n'
    assert storage.listdir(storage.join(gcs_bucket, "a")) == ["x.json"]
    assert storage.isdir(storage.join(gcs_bucket, "a")) and storage.isfile(path)


def test_append_log_keeps_earlier_lines_across_reopen(gcs_bucket):  # noqa: F811
    path = storage.join(gcs_bucket, "metrics.jsonl")
    log = storage.AppendLog(path)
    log.write("1\n")
    log.close()
    log = storage.AppendLog(path)  # a resumed run appends after what the first one wrote
    log.write("2\n")
    log.flush()
    assert storage.read_text(path) == "1\n2\n"
    log.close()


def test_commit_dir_replaces_a_folder_and_drops_the_staging_prefix(gcs_bucket):  # noqa: F811
    final = storage.join(gcs_bucket, "export")
    for name in ("config.json", "old.safetensors"):
        storage.write_bytes(storage.join(final, name), b"old")
    tmp = storage.temp_sibling(final)
    assert storage.basename(tmp).startswith(".export.partial-")
    for name, data in (("config.json", b"new"), ("model.safetensors", b"w"), ("tok/a.json", b"t")):
        storage.write_bytes(storage.join(tmp, name), data)
    storage.commit_dir(tmp, final)
    assert storage.walk_files(final) == ["config.json", "model.safetensors", "tok/a.json"]
    assert storage.read_text(storage.join(final, "config.json")) == "new"
    assert storage.listdir(gcs_bucket) == ["export"]  # no staging prefix left


def test_load_hf_streams_a_model_from_a_bucket_prefix(gcs_bucket, tmp_path, monkeypatch):  # noqa: F811
    folder, _ = save_tiny(tmp_path, "qwen2", tie=False)
    remote = storage.join(gcs_bucket, "models", "tiny")
    storage.upload_dir(folder, remote)
    local_model, local_cfg = load_hf(folder)

    reads: list[int] = []
    real = storage.read_range
    monkeypatch.setattr(storage, "read_range", lambda f, a, b: reads.append(b - a) or real(f, a, b))
    remote_model, remote_cfg = load_hf(remote)

    assert remote_cfg == local_cfg
    a, b = nnx.state(local_model, nnx.Param), nnx.state(remote_model, nnx.Param)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # one ranged read per tensor, each exactly that tensor's bytes: never the whole file at once
    (st,) = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    tensors, _, _ = safetensors_io.read_header(os.path.join(folder, st))
    assert sorted(reads) == sorted(t.end - t.start for t in tensors.values())
    assert max(reads) < os.path.getsize(os.path.join(folder, st)) / 2


def test_set_aside_moves_a_damaged_step_on_a_bucket(gcs_bucket):  # noqa: F811
    from bsft_jax.checkpoint.read import steps_on_disk
    from bsft_jax.checkpoint.recovery import set_aside

    ckpt = storage.join(gcs_bucket, "run", "checkpoints")
    for step in (1, 2):
        for name in ("commit_success.txt", "params/a", "meta/b"):
            storage.write_bytes(storage.join(ckpt, str(step), name), f"{step}{name}".encode())
    storage.write_bytes(storage.join(ckpt, "2.corrupt", "x"), b"an earlier set-aside")
    assert steps_on_disk(ckpt) == [1, 2]
    moved = set_aside(ckpt, 2)  # no rename on GCS: copied server-side, then the originals deleted
    assert moved == storage.join(ckpt, "2.corrupt.2")
    assert steps_on_disk(ckpt) == [1]
    assert not storage.exists(storage.join(ckpt, "2"))
    assert storage.walk_files(moved) == ["commit_success.txt", "meta/b", "params/a"]
    assert storage.read_text(storage.join(moved, "params", "a")) == "2params/a"


def test_move_renames_locally(tmp_path):
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "f").write_text("x")
    storage.move(str(tmp_path / "3"), str(tmp_path / "3.corrupt"))
    assert sorted(os.listdir(tmp_path)) == ["3.corrupt"] and (tmp_path / "3.corrupt" / "f").read_text() == "x"


def test_best_keeper_keeps_its_state_and_config_on_gs(gcs_bucket):  # noqa: F811
    """Keep-best on a bucket run directory: best/config.json and best_state.json land on gs://, and a
    restarted keeper reads its counts back from there."""
    from bsft_jax.train.steer import BEST_STATE, BestKeeper

    run_dir = storage.join(gcs_bucket, "run")
    storage.write_bytes(storage.join(run_dir, "config.json"), b'{"seed": 3}\n')
    saved = []
    keeper = BestKeeper(run_dir, "overall_f1", patience=2)
    assert keeper.directory == storage.join(run_dir, "best")
    assert not keeper.update(4, {"steer/overall_f1": 0.5}, lambda c: saved.append(c.directory))
    keeper.close()
    assert storage.read_text(storage.join(run_dir, "best", "config.json")) == '{"seed": 3}\n'
    assert json.loads(storage.read_text(storage.join(run_dir, BEST_STATE)))["step"] == 4
    resumed = BestKeeper(run_dir, "overall_f1", patience=2)
    assert not resumed.update(8, {"steer/overall_f1": 0.4}, lambda c: saved.append(8))
    assert resumed.update(12, {"steer/overall_f1": 0.5}, lambda c: saved.append(12))  # 2 evals without a new best
    assert len(saved) == 1


def test_tfds_data_on_gs_is_read_through_a_local_mirror(gcs_bucket, tmp_path, monkeypatch):  # noqa: F811
    """data.path=gs://... for a built TFDS dataset: array_record cannot open bucket paths (it blocks), so
    the split files are mirrored once into the cache and read there; a second open reuses the mirror,
    and a rebuilt dataset in the bucket (other files or sizes) is mirrored again."""
    from bsft_jax.data import demo
    from bsft_jax.data.schema import record_from_dict
    from bsft_jax.data.tfds_builder import build, data_source

    monkeypatch.setenv("BSFT_JAX_CACHE", str(tmp_path / "cache"))
    cfg = demo.DemoConfig(num_train=20, num_validation=4, num_test=8, seed=5)
    build(demo.demo_dir(cfg, cache_dir=str(tmp_path / "demo")), data_dir=str(tmp_path / "tfds"))
    url = storage.join(gcs_bucket, "tfds")
    storage.upload_dir(str(tmp_path / "tfds"), url)

    def ids(data_dir):
        return sorted(record_from_dict(ex).id for ex in data_source("train", data_dir=data_dir))

    assert ids(url) == ids(str(tmp_path / "tfds")) and len(ids(url)) == 20
    mirrors = os.listdir(tmp_path / "cache" / "tfds_mirror")
    assert len(mirrors) == 1
    manifest = tmp_path / "cache" / "tfds_mirror" / mirrors[0] / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert ids(url) and manifest.stat().st_mtime_ns == stamp  # reused, not copied again
    extra = storage.join(url, "behavior_bench", "1.0.0", "extra.txt")
    storage.write_bytes(extra, b"x")  # the bucket's dataset changed: mirrored again
    assert ids(url) and json.loads(manifest.read_text()) != {} and manifest.stat().st_mtime_ns != stamp
