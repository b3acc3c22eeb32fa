"""Run bsft_jax training as a GKE workload with XPK (TPU slices, multi-slice too).

    python launch/xpk.py --cluster my-cluster --workload bsft-7b --tpu-type v5p-128 \
        --docker-image gcr.io/my-project/bsft_jax:latest --config configs/qwen2_5_7b_behaviorsft.py \
        --run-dir gs://my-bucket/runs/qwen7b --model gs://my-bucket/models/Qwen2.5-7B-Instruct --wait

Build the image from launch/Dockerfile first (``docker build -f launch/Dockerfile -t IMAGE .`` and
push it). XPK starts one pod per TPU VM host; each runs the same ``python -m bsft_jax.train`` and
JAX's multi-controller runtime connects them. ``--dry-run`` prints the xpk commands only.
The pods share nothing but what they reach over the network: give ``--run-dir`` and ``--model`` as
gs:// URLs (read and written with the node's default credentials, e.g. Workload Identity). A pod
that fails fails the JobSet; with ``--wait`` the launcher waits for the workload and exits non-zero
when it failed (``xpk workload list --wait-for-job-completion``).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    Parser,
    Runner,
    add_common_args,
    check_config_file,
    launcher_main,
    positive_int,
    storage_overrides,
    train_command,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", required=True)
    p.add_argument("--workload", required=True)
    p.add_argument("--tpu-type", required=True, help="e.g. v5p-128, v6e-256")
    p.add_argument("--num-slices", type=positive_int, default=1)
    p.add_argument("--docker-image", required=True)
    p.add_argument("--project", default=None)
    p.add_argument("--zone", default=None)
    p.add_argument("--priority", default="medium")
    p.add_argument("--wait", action="store_true", help="wait for the workload; exit non-zero if it failed")
    p.add_argument("--timeout", type=positive_int, default=None, help="with --wait: give up after this many seconds")
    add_common_args(p)
    return p


def xpk_command(args: argparse.Namespace) -> list[str]:
    """``xpk workload create ...`` running the training in every pod."""
    overrides = [*storage_overrides(args.run_dir, args.model), *args.overrides]
    cmd = ["xpk", "workload", "create", f"--cluster={args.cluster}", f"--workload={args.workload}",
           f"--tpu-type={args.tpu_type}", f"--num-slices={args.num_slices}", f"--docker-image={args.docker_image}",
           f"--priority={args.priority}", f"--command={train_command(args.config, overrides)}"]
    if args.project:
        cmd.append(f"--project={args.project}")
    if args.zone:
        cmd.append(f"--zone={args.zone}")
    return cmd


def wait_command(args: argparse.Namespace) -> list[str]:
    """``xpk workload list --wait-for-job-completion``: exits non-zero if the workload failed."""
    cmd = ["xpk", "workload", "list", f"--cluster={args.cluster}", f"--wait-for-job-completion={args.workload}"]
    if args.timeout:
        cmd.append(f"--timeout={args.timeout}")
    for flag in ("project", "zone"):
        if getattr(args, flag):
            cmd.append(f"--{flag}={getattr(args, flag)}")
    return cmd


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; a missing xpk or a failed command is one ``error:`` line, exit 2."""
    return launcher_main(lambda: _launch(build_parser().parse_args(argv)))


def _launch(args: argparse.Namespace) -> int:
    """Creates the workload; with ``--wait``, a failed workload makes the launcher fail (exit 1)."""
    check_config_file(args.config, REPO)  # the image holds this checkout: configs/ paths are relative to it
    run = Runner(args.dry_run)
    run(xpk_command(args))
    if args.wait and run(wait_command(args), check=False):
        print(f"workload {args.workload} failed (see `xpk workload list --cluster={args.cluster}` and the pod logs)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
