"""Run bsft_jax training as a GKE workload with XPK (TPU slices, multi-slice too).

    python launch/xpk.py --cluster my-cluster --workload bsft-7b --tpu-type v5p-128 \
        --docker-image gcr.io/my-project/bsft_jax:latest --config configs/qwen2_5_7b_behaviorsft.py

Build the image from launch/Dockerfile first (``docker build -f launch/Dockerfile -t IMAGE .`` and
push it). XPK starts one pod per TPU VM host; each runs the same ``python -m bsft_jax.train`` and
JAX's multi-controller runtime connects them. ``--dry-run`` prints the xpk command only.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Runner, add_common_args, launcher_main, train_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", required=True)
    p.add_argument("--workload", required=True)
    p.add_argument("--tpu-type", required=True, help="e.g. v5p-128, v6e-256")
    p.add_argument("--num-slices", type=int, default=1)
    p.add_argument("--docker-image", required=True)
    p.add_argument("--project", default=None)
    p.add_argument("--zone", default=None)
    p.add_argument("--priority", default="medium")
    add_common_args(p)
    return p


def xpk_command(args: argparse.Namespace) -> list[str]:
    cmd = ["xpk", "workload", "create", f"--cluster={args.cluster}", f"--workload={args.workload}",
           f"--tpu-type={args.tpu_type}", f"--num-slices={args.num_slices}", f"--docker-image={args.docker_image}",
           f"--priority={args.priority}", f"--command={train_command(args.config, args.overrides)}"]
    if args.project:
        cmd.append(f"--project={args.project}")
    if args.zone:
        cmd.append(f"--zone={args.zone}")
    return cmd


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; a missing xpk or a failed command is one ``error:`` line, exit 2."""
    args = build_parser().parse_args(argv)
    return launcher_main(lambda: Runner(args.dry_run)(xpk_command(args)))


if __name__ == "__main__":
    sys.exit(main())
