"""Run bsft_jax training on every worker of a Cloud TPU VM slice (v4 / v5e / v5p / v6e pods).

    python launch/tpu_pod.py --tpu my-v5p-32 --zone us-east5-a --accelerator-type v5p-32 \
        --config configs/qwen2_5_7b_behaviorsft.py --run-dir gs://my-bucket/runs/qwen7b \
        --model gs://my-bucket/models/Qwen2.5-7B-Instruct -- --config.optimizer.learning_rate=1e-5

Steps (each printed; ``--dry-run`` prints them and runs nothing):
  1. create the TPU VM slice unless it exists (``--reuse-only`` refuses to create);
  2. copy this checkout to every worker (a tarball over ``tpu-vm scp --worker=all``);
  3. install bsft_jax with the TPU extra on every worker;
  4. run ``python -m bsft_jax.train --config ...`` on all workers at once (``ssh --worker=all``):
     JAX's multi-controller runtime makes each worker one process of the job; every worker
     writes its own log to ``<log_dir>/worker-<hostname>.log`` (on its VM) while the combined
     output streams here. The remote command runs under ``set -o pipefail``, so ``... | tee``
     keeps the training's exit status, which each worker also records in ``<log_dir>/exit_status``;
  5. read every worker's exit status back: the launcher fails (exit 1) if any worker failed,
     whatever ``gcloud ... ssh --worker=all`` itself returned.
The run directory, data and HF model must be storage every worker shares: give ``--run-dir`` and
``--model`` as gs:// URLs (bsft_jax reads and writes buckets itself, with the VM's default
credentials; the training checks at start that all hosts see one run directory).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    LaunchError,
    Parser,
    Runner,
    add_common_args,
    check_config_file,
    launcher_main,
    storage_overrides,
    train_command,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Default TPU VM software per accelerator generation (Cloud TPU docs' JAX images).
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
                    "v6e": "v2-alpha-tpuv6e"}


def runtime_version(args: argparse.Namespace) -> str:
    if args.runtime_version:
        return args.runtime_version
    generation = args.accelerator_type.rsplit("-", 1)[0]
    if generation not in RUNTIME_VERSIONS:
        raise LaunchError(f"--accelerator-type {args.accelerator_type!r}: no default runtime for {generation!r}; "
                         "pass --runtime-version")
    return RUNTIME_VERSIONS[generation]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tpu", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default=None)
    p.add_argument("--accelerator-type", default="v5p-32")
    p.add_argument("--runtime-version", default=None,
                   help="TPU VM software version (default: by accelerator generation, see RUNTIME_VERSIONS)")
    p.add_argument("--spot", action="store_true", help="create a Spot slice (preemptible; training resumes)")
    p.add_argument("--reuse-only", action="store_true", help="fail instead of creating the slice")
    p.add_argument("--skip-install", action="store_true", help="code and packages are already on the workers")
    p.add_argument("--remote-dir", default="bsft_jax", help="checkout location on the workers (under $HOME)")
    p.add_argument("--log-dir", default="bsft_logs", help="per-worker log folder on the workers (under $HOME)")
    add_common_args(p)
    return p


def gcloud_tpu(args: argparse.Namespace, verb: str, *extra: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *extra, f"--zone={args.zone}"]
    if args.project:
        cmd.append(f"--project={args.project}")
    return cmd


def commands(args: argparse.Namespace, run: Runner) -> None:
    exists = run.probe(gcloud_tpu(args, "describe", args.tpu))
    if not exists:
        if args.reuse_only and not run.dry_run:
            raise LaunchError(f"TPU {args.tpu!r} does not exist in {args.zone} and --reuse-only was given")
        create = gcloud_tpu(args, "create", args.tpu, f"--accelerator-type={args.accelerator_type}",
                            f"--version={runtime_version(args)}")
        if args.spot:
            create.append("--spot")
        run(create)
    if not args.skip_install:
        tarball = "/tmp/bsft_jax_src.tar.gz"
        run(["tar", "czf", tarball, "-C", REPO, "--exclude=.venv", "--exclude=.git", "--exclude=runs", "."])
        run(gcloud_tpu(args, "scp", tarball, f"{args.tpu}:~/bsft_jax_src.tar.gz", "--worker=all"))
        install = (f"mkdir -p ~/{args.remote_dir} && tar xzf ~/bsft_jax_src.tar.gz -C ~/{args.remote_dir} && "
                   f"cd ~/{args.remote_dir} && python3 -m pip install -q -e '.[tpu,gcs]'")
        run(gcloud_tpu(args, "ssh", args.tpu, "--worker=all", f"--command={install}"))
    train = train_command(args.config, [*storage_overrides(args.run_dir, args.model), *args.overrides])
    status_file = f"~/{args.log_dir}/exit_status"
    # pipefail: `train | tee` exits with the training's status, not tee's; each worker records it.
    remote = (f"set -o pipefail; mkdir -p ~/{args.log_dir} && rm -f {status_file} && cd ~/{args.remote_dir} && "
              f"{train} 2>&1 | tee ~/{args.log_dir}/worker-$(hostname).log; status=$?; "
              f"echo $status > {status_file}; exit $status")
    code = run(gcloud_tpu(args, "ssh", args.tpu, "--worker=all", f"--command={remote}"), check=False)
    report = run.capture(gcloud_tpu(args, "ssh", args.tpu, "--worker=all",
                                    f"--command=echo \"worker $(hostname) exit $(cat {status_file} 2>/dev/null "
                                    "|| echo missing)\""))
    failed = failed_workers(report)
    if code or failed:
        raise SystemExit(f"training failed (ssh exit status {code}); failed workers: {failed or 'see the log'}")


def failed_workers(report: str) -> list[str]:
    """``worker <host> exit <status>`` lines whose status is not 0 (or missing)."""
    return [line.strip() for line in report.splitlines() if line.startswith("worker ") and not line.endswith(" exit 0")]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; a missing tool, failed command or bad argument is one ``error:`` line, exit 2."""
    return launcher_main(lambda: _launch(build_parser().parse_args(argv)))


def _launch(args: argparse.Namespace) -> int:
    check_config_file(args.config, REPO)  # the workers run it from a copy of this checkout
    commands(args, Runner(args.dry_run))
    if args.dry_run:
        print(f"# per-worker logs would be in ~/{args.log_dir}/worker-<hostname>.log on each worker; fetch with:")
        print("# " + shlex.join(gcloud_tpu(args, "scp", "--recurse", f"{args.tpu}:~/{args.log_dir}", ".",
                                           "--worker=all")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
