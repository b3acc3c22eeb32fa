"""The memory planner in processes of its own: a plan on more devices than this process has (the
planner starts a worker), and ``python -m bsft_jax.train --plan`` on the 7B recipe, whose peak RSS
must stay far below what the weights alone would take (7.6B parameters: 30 GB in fp32, 15 GB in bf16).
Moved from tests/train/test_plan.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from bsft_jax.train.plan import parse_bytes, parse_mesh, plan_memory
from tests.processes import ROOT, subprocess_env
from tests.train.common import tiny_config


def test_plan_on_more_devices_than_this_process_has_runs_in_a_subprocess(tmp_path):
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"), **{"train.global_batch_size": 16})
    plan = plan_memory(cfg, mesh=parse_mesh("fsdp=-1,tensor=2"), num_devices=16, hbm_bytes=parse_bytes("1MiB"))
    assert plan["num_devices"] == 16 and plan["mesh"] == {"data": 1, "fsdp": 8, "tensor": 2}
    assert plan["fits"] is True and plan["hbm_bytes_per_device"] == 2**20
    assert plan["batch"]["rows_per_device_per_microbatch"] == 2


def _run_plan_cli(*args: str) -> tuple[subprocess.CompletedProcess, int]:
    """``python -m bsft_jax.train --plan ...`` in a child that prints its own peak RSS (bytes).

    VmHWM, not ru_maxrss: Linux carries the parent's (pytest's) peak RSS into ru_maxrss across exec.
    """
    code = ("import sys\nfrom bsft_jax.train.__main__ import main\nrc = main(sys.argv)\n"
            "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]\n"
            "print('MAXRSS', int(hwm) * 1024)\nsys.exit(rc)\n")
    env = subprocess_env(BSFT_QWEN2_5_7B="/nonexistent/Qwen2.5-7B-Instruct")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    rss = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("MAXRSS")]
    return out, (rss[0] if rss else -1)


def test_plan_cli_on_the_7b_recipe_runs_without_allocating_weights(tmp_path):
    out_json = tmp_path / "plan.json"
    out, rss = _run_plan_cli("--config", "configs/qwen2_5_7b_behaviorsft.py", "--plan",
                             "--mesh=data=1,fsdp=-1,tensor=4", "--plan_devices", "32", "--plan_compiler=cpu",
                             f"--plan_json={out_json}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "memory plan of configs/qwen2_5_7b_behaviorsft.py on 32 devices, mesh data=1 fsdp=8 tensor=4" in out.stdout
    plan = json.loads(out_json.read_text())
    n = plan["model"]["num_params"]
    assert 7.6e9 < n < 7.7e9
    # nearly every parameter is split 32 ways (fsdp=8 x tensor=4); exact bytes are per shard shape
    assert math.isclose(plan["analytic"]["params"], n * 4 / 32, rel_tol=0.01)
    assert plan["analytic"]["opt_state"] == pytest.approx(2 * plan["analytic"]["params"], abs=64)
    assert plan["xla"]["argument"] >= plan["analytic"]["params"] + plan["analytic"]["opt_state"]
    # no weights: the weights alone would be 30 GB (fp32) / 15 GB (bf16); the planner stays under 3 GB
    assert 0 < rss < 3 * 2**30, rss


def test_plan_cli_user_errors_exit_2_without_traceback():
    out, _ = _run_plan_cli("--config", "configs/qwen2_5_7b_behaviorsft.py", "--plan", "--plan_target=v5e-64",
                           "--plan_compiler=cpu")
    assert out.returncode == 2
    assert "not divisible by train.microbatches x (data x fsdp) = 2 x 64" in out.stderr
    assert "Traceback" not in out.stderr
