"""A demo training run whose run_dir is a bucket (gs://test-bucket/...), on a local GCS emulator.

It trains, checkpoints, is killed with SIGKILL in the middle of step 5 (a separate process: no
clean-up, no flush), resumes, and ends with bitwise the final weights of the same run on local
disk. The evaluator and the exporter read it from the bucket: the report equals the local run's,
and the export, written to a gs:// prefix, is byte-identical to the local run's export, leaves no
staging prefix behind, and loads in transformers from a local copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bsft_jax import storage
from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.checkpoint.read import load_params
from bsft_jax.evaluate.compare import run_comparison
from bsft_jax.export import export_checkpoint
from bsft_jax.setup.config import load_config_file
from bsft_jax.train.loop import run
from tests.processes import ROOT, subprocess_env

from .gcs_emulator import gcs_bucket, gcs_server  # noqa: F401  (pytest fixtures)

STEPS = 6
OVERRIDES = {"data.demo.num_train": 390, "data.demo.num_validation": 26, "data.demo.num_test": 52,
             "data.demo.tokenizer_vocab": 512, "train.steps": STEPS, "train.global_batch_size": 4,
             "data.seq_len": 128, "optimizer.warmup_steps": 1, "checkpoint.every_steps": 2, "checkpoint.keep": 3,
             "train.eval_every": -1, "train.log_every": 2, "logging.tensorboard": True}

# The killed run: the same config in a fresh process that SIGKILLs itself once step 5 is computed.
_KILLED = """
import os, signal, sys, json
from bsft_jax.setup.config import load_config_file
from bsft_jax.train.loop import run
cfg = load_config_file(sys.argv[1], "demo_scratch.py")
cfg.run_dir = sys.argv[2]
for key, value in json.loads(sys.argv[3]).items():
    section, *rest = key.split(".")
    node = cfg[section]
    for k in rest[:-1]:
        node = node[k]
    node[rest[-1]] = value
def kill(step, _metrics):
    if step == 5:
        os.kill(os.getpid(), signal.SIGKILL)
run(cfg, on_step=kill)
"""


def demo_config(run_dir: str):
    cfg = load_config_file(os.path.join(ROOT, "configs", "demo_scratch.py"), "demo_scratch.py")
    cfg.run_dir = run_dir
    for key, value in OVERRIDES.items():
        section, *rest = key.split(".")
        node = cfg[section]
        for k in rest[:-1]:
            node = node[k]
        node[rest[-1]] = value
    return cfg


def _params(run_dir: str) -> list[np.ndarray]:
    model, _, _ = load_params(run_dir)
    from flax import nnx

    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.fixture(scope="module")
def runs(gcs_server, tmp_path_factory):  # noqa: F811
    """(local run dir, gs:// run dir) of the same demo run; the gs:// one killed and resumed."""
    _, env = gcs_server
    tmp = tmp_path_factory.mktemp("gcs_run")
    local_dir = str(tmp / "local")
    remote_dir = "gs://test-bucket/gcs_run/run"
    one = jax.devices()[:1]
    run(demo_config(local_dir), devices=one)

    killed = subprocess.run(
        [sys.executable, "-c", _KILLED, os.path.join(ROOT, "configs", "demo_scratch.py"), remote_dir,
         json.dumps(OVERRIDES)],
        cwd=ROOT, env=subprocess_env(**env, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1"),
        capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    saved = Checkpointer(remote_dir).all_steps()
    # step 4's async save may not have committed: then a half-written step 4 is left and saved over
    assert saved in ([2], [2, 4]), saved

    resumed = run(demo_config(remote_dir), devices=one)
    assert resumed.start_step == max(saved) and resumed.final_step == STEPS
    return local_dir, remote_dir


def test_killed_gs_run_resumes_to_the_local_runs_weights_bitwise(runs):
    local_dir, remote_dir = runs
    for a, b in zip(_params(local_dir), _params(remote_dir), strict=True):
        np.testing.assert_array_equal(a, b)
    for name in ("config.json", "model_config.json", "startup.json", "tokenizer/tokenizer.json", "metrics.jsonl"):
        assert storage.isfile(storage.join(remote_dir, name)), name
    records = [json.loads(line) for line in storage.read_text(storage.join(remote_dir, "metrics.jsonl")).splitlines()]
    assert {r["step"] for r in records if r["split"] == "train"} >= {5, 6}
    assert any(n.startswith("events.out.tfevents") for n in storage.listdir(storage.join(remote_dir, "tensorboard")))
    assert storage.isfile(storage.join(remote_dir, "checkpoints", str(STEPS), "commit_success.txt"))


def test_evaluate_reads_the_gs_run_and_writes_a_gs_report(runs, tmp_path):
    local_dir, remote_dir = runs
    kw = dict(baselines=(), limit=4, max_new_tokens=6, batch_size=4)
    out = "gs://test-bucket/gcs_run/eval"
    run_comparison(demo_config(local_dir), checkpoint=local_dir, out_dir=str(tmp_path / "eval"), **kw)
    run_comparison(demo_config(remote_dir), checkpoint=remote_dir, out_dir=out, **kw)
    got = json.loads(storage.read_text(storage.join(out, "report.json")))
    want = json.loads(open(tmp_path / "eval" / "report.json").read())
    assert got["metrics"] == want["metrics"] and got["runs"] == ["BehaviorSFT"]
    assert got["info"]["BehaviorSFT"]["checkpoint"] == f"{remote_dir}@{STEPS}"
    assert sorted(storage.listdir(out)) == ["predictions_BehaviorSFT.jsonl", "radar.png", "report.json", "report.md"]


def test_export_to_gs_is_committed_whole_and_loads_in_transformers(runs, tmp_path):
    local_dir, remote_dir = runs
    out = "gs://test-bucket/gcs_run/export"
    assert export_checkpoint(remote_dir, out) == out
    local_export = export_checkpoint(local_dir, str(tmp_path / "local_export"))
    assert not [n for n in storage.listdir("gs://test-bucket/gcs_run") if "partial" in n]  # staging prefix gone
    files = storage.walk_files(out)
    assert files == storage.walk_files(local_export) and "config.json" in files
    for name in files:  # the same run exported from the bucket and from local disk: identical bytes
        with storage.open_file(storage.join(out, name), "rb") as f, open(os.path.join(local_export, name), "rb") as g:
            assert f.read() == g.read(), name

    from transformers import AutoModelForCausalLM, AutoTokenizer

    with storage.local_copy(out, skip_suffixes=()) as copy:
        model = AutoModelForCausalLM.from_pretrained(copy, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(copy, local_files_only=True)
    assert model.config.vocab_size == len(tokenizer) or model.config.vocab_size >= len(tokenizer)
    ids = tokenizer("The patient reports chest pain.", return_tensors="pt").input_ids
    assert np.isfinite(model(ids).logits.detach().numpy()).all()
