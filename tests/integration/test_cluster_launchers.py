"""TPU pod, SLURM and XPK launchers: --dry-run prints exactly the commands they would run."""

import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def dry_run(script, *args):
    out = subprocess.run([sys.executable, os.path.join(REPO, "launch", script), *args], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout


def commands(stdout):
    return [shlex.split(line.removeprefix("[dry-run] ")) for line in stdout.splitlines()
            if line.startswith("[dry-run] ")]


def test_tpu_pod_dry_run_creates_installs_and_runs_on_all_workers():
    out = dry_run("tpu_pod.py", "--tpu", "bsft-v5p", "--zone", "us-east5-a", "--project", "proj",
                  "--accelerator-type", "v5p-32", "--spot", "--config", "configs/qwen2_5_7b_behaviorsft.py",
                  "--dry-run", "--", "--config.optimizer.learning_rate=1e-5", "--config.train.steps=100")
    cmds = commands(out)
    describe, create, tar, scp, install, train, _status = cmds
    assert describe[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "describe"] and "bsft-v5p" in describe
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "bsft-v5p"]
    assert {"--accelerator-type=v5p-32", "--version=v2-alpha-tpuv5", "--spot", "--zone=us-east5-a",
            "--project=proj"} <= set(create)
    assert tar[0] == "tar" and scp[4] == "scp" and "--worker=all" in scp
    assert install[4] == "ssh" and "--worker=all" in install
    assert "pip install -q -e '.[tpu,gcs]'" in next(a for a in install if a.startswith("--command="))
    assert train[4] == "ssh" and "--worker=all" in train
    remote = next(a for a in train if a.startswith("--command=")).removeprefix("--command=")
    assert ("python3 -m bsft_jax.train --config configs/qwen2_5_7b_behaviorsft.py "
            "--config.optimizer.learning_rate=1e-5 --config.train.steps=100") in remote
    assert "tee ~/bsft_logs/worker-$(hostname).log" in remote


def test_tpu_pod_needs_a_runtime_for_unknown_generations():
    out = subprocess.run([sys.executable, os.path.join(REPO, "launch", "tpu_pod.py"), "--tpu", "x", "--zone", "z",
                          "--accelerator-type", "v9x-8", "--config", "configs/demo.py", "--dry-run"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.splitlines() == ["error: --accelerator-type 'v9x-8': no default runtime for 'v9x'; pass "
                                       "--runtime-version"], out.stderr


@pytest.mark.parametrize("per", ["gpu", "host"])
def test_slurm_dry_run_prints_the_sbatch_script_and_command(per):
    out = dry_run("slurm.py", "--nodes", "2", "--gpus-per-node", "8", "--per", per, "--partition", "a100",
                  "--config", "configs/llama3_1_8b_behaviorsft.py", "--dry-run", "--",
                  "--config.optimizer.learning_rate=2e-5")
    assert "#SBATCH --nodes=2" in out and "#SBATCH --gpus-per-node=8" in out and "#SBATCH --partition=a100" in out
    assert f"#SBATCH --ntasks-per-node={8 if per == 'gpu' else 1}" in out
    assert ("BSFT_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in out) == (per == "host")
    srun = next(line for line in out.splitlines() if line.startswith("srun "))
    assert "--output=slurm_logs/%x-%j-task%t.log" in srun
    assert ("python3 -m bsft_jax.train --config configs/llama3_1_8b_behaviorsft.py "
            "--config.optimizer.learning_rate=2e-5") in srun
    assert commands(out) == [["sbatch", "slurm_bsft.sbatch"]]


def test_xpk_dry_run():
    out = dry_run("xpk.py", "--cluster", "c1", "--workload", "bsft-7b", "--tpu-type", "v5p-128", "--num-slices", "2",
                  "--docker-image", "gcr.io/p/bsft:1", "--config", "configs/qwen2_5_7b_behaviorsft.py", "--dry-run")
    (cmd,) = commands(out)
    assert cmd[:3] == ["xpk", "workload", "create"]
    assert {"--cluster=c1", "--workload=bsft-7b", "--tpu-type=v5p-128", "--num-slices=2",
            "--docker-image=gcr.io/p/bsft:1"} <= set(cmd)
    assert "--command=python3 -m bsft_jax.train --config configs/qwen2_5_7b_behaviorsft.py" in cmd


def test_tpu_pod_runs_on_buckets_keeps_the_exit_status_and_collects_every_workers():
    out = dry_run("tpu_pod.py", "--tpu", "bsft-v5p", "--zone", "us-east5-a", "--config",
                  "configs/qwen2_5_7b_behaviorsft.py", "--run-dir", "gs://b/runs/q7", "--model", "gs://b/models/q7",
                  "--skip-install", "--dry-run")
    *_, train, status = commands(out)
    remote = next(a for a in train if a.startswith("--command=")).removeprefix("--command=")
    assert remote.startswith("set -o pipefail;")  # `train | tee` keeps the training's exit status
    assert "--config.run_dir=gs://b/runs/q7 --config.model.hf_path=gs://b/models/q7" in remote
    assert "| tee ~/bsft_logs/worker-$(hostname).log; status=$?; echo $status > ~/bsft_logs/exit_status; exit $status" \
        in remote
    assert status[4] == "ssh" and "--worker=all" in status
    assert "cat ~/bsft_logs/exit_status" in next(a for a in status if a.startswith("--command="))


def test_tpu_pod_fails_when_any_worker_failed():
    sys.path.insert(0, os.path.join(REPO, "launch"))
    from tpu_pod import failed_workers

    report = "worker t-w-0 exit 0\nworker t-w-1 exit 1\nworker t-w-2 exit missing\nWarning: noise\n"
    assert failed_workers(report) == ["worker t-w-1 exit 1", "worker t-w-2 exit missing"]
    assert failed_workers("worker a exit 0\nworker b exit 0\n") == []


def test_launchers_refuse_a_run_dir_local_to_each_worker():
    for script, extra in (("tpu_pod.py", ["--tpu", "t", "--zone", "z"]),
                          ("xpk.py", ["--cluster", "c", "--workload", "w", "--tpu-type", "v5p-8", "--docker-image",
                                      "i"])):
        out = subprocess.run([sys.executable, os.path.join(REPO, "launch", script), *extra, "--config",
                              "configs/demo.py", "--run-dir", "runs/x", "--dry-run"], capture_output=True, text=True,
                             cwd=REPO)
        assert out.returncode == 2 and "gs://bucket/path" in out.stderr, script  # a user error: one line
        assert out.stderr.startswith("error: --run-dir 'runs/x'") and "Traceback" not in out.stderr, script


def test_xpk_passes_buckets_and_waits_for_the_workload():
    out = dry_run("xpk.py", "--cluster", "c1", "--workload", "bsft-7b", "--tpu-type", "v5p-128", "--docker-image",
                  "gcr.io/p/bsft:1", "--config", "configs/qwen2_5_7b_behaviorsft.py", "--run-dir", "gs://b/runs/q7",
                  "--model", "gs://b/models/q7", "--wait", "--timeout", "3600", "--dry-run")
    create, wait = commands(out)
    command = next(a for a in create if a.startswith("--command="))
    assert "--config.run_dir=gs://b/runs/q7 --config.model.hf_path=gs://b/models/q7" in command
    assert wait == ["xpk", "workload", "list", "--cluster=c1", "--wait-for-job-completion=bsft-7b", "--timeout=3600"]


# Every launcher mistake is one line on stderr, exit 2: argparse errors included (no usage block).
LAUNCHER_ERRORS = {
    "tpu_missing_args": ("tpu_pod.py", [], "the following arguments are required: --tpu, --zone, --config; see "
                                           "tpu_pod.py --help"),
    "tpu_missing_config": ("tpu_pod.py", ["--tpu", "t", "--zone", "z", "--config", "nope.py", "--dry-run"],
                           f"--config nope.py: no such file (looked in {REPO})"),
    "slurm_zero_nodes": ("slurm.py", ["--nodes", "0", "--config", "configs/demo.py", "--dry-run"],
                         "argument --nodes: must be >= 1, got 0"),
    "slurm_gpus_not_a_number": ("slurm.py", ["--nodes", "1", "--gpus-per-node", "x", "--config", "configs/demo.py"],
                                "argument --gpus-per-node: expected a whole number >= 1, got 'x'"),
    "slurm_missing_config": ("slurm.py", ["--nodes", "1", "--config", "nope.py", "--dry-run"],
                             "--config nope.py: no such file"),
    "xpk_zero_slices": ("xpk.py", ["--cluster", "c", "--workload", "w", "--tpu-type", "v5p-8", "--docker-image", "i",
                                   "--num-slices", "0", "--config", "configs/demo.py", "--dry-run"],
                        "argument --num-slices: must be >= 1, got 0"),
    "local_processes_not_a_number": ("local.py", ["--num_processes", "two"],
                                     "argument --num_processes: expected a whole number >= 1, got 'two'"),
    "local_zero_processes": ("local.py", ["--num_processes", "0"], "argument --num_processes: must be >= 1"),
    "local_no_such_module": ("local.py", ["--num_processes", "1", "--module", "bsft_jax.nosuch"],
                             "--module 'bsft_jax.nosuch': no such Python module"),
    "local_log_dir_under_a_file": ("local.py", ["--num_processes", "1", "--log_dir", "{tmp}/file/logs"],
                                   "--log_dir '{tmp}/file/logs': cannot write the process logs there"),
    # a process's own error: forwarded to stderr (prefixed), its exit status kept; a relative --config is
    # looked up in the caller's folder, as one `python -m bsft_jax.train` there would
    "local_child_error": ("local.py", ["--num_processes", "1", "--", "--config", "nope.py"],
                          "[p0] error: --config nope.py: no such file (looked in {tmp})"),
}


def test_launcher_mistakes_are_one_line_and_exit_2(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = {name: subprocess.Popen([sys.executable, os.path.join(REPO, "launch", script),
                                     *(a.format(tmp=tmp_path) for a in args)],
                                    cwd=REPO if script != "local.py" else tmp_path, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (script, args, _) in LAUNCHER_ERRORS.items()}
    problems = []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        expected = LAUNCHER_ERRORS[name][2].format(tmp=tmp_path)
        lines = [line for line in err.splitlines() if line.strip()]
        prefix = "[p0] error: " if name == "local_child_error" else "error: "
        if not (proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(prefix) and expected in lines[0]
                and "Traceback" not in out + err):
            problems.append(f"{name}: exit {proc.returncode}, stderr {err[-1000:]!r}")
    assert not problems, "\n".join(problems)
