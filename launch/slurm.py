"""Run bsft_jax training on a SLURM GPU cluster (one process per GPU, or one per host).

    python launch/slurm.py --nodes 4 --gpus-per-node 8 --config configs/llama3_1_8b_behaviorsft.py \
        -- --config.optimizer.learning_rate=1e-5

Writes an sbatch script (``--script-out``) and submits it with ``sbatch``; ``--dry-run`` prints the
script and the command instead. Every task runs ``python -m bsft_jax.train``; JAX's SLURM support in
``jax.distributed.initialize()`` takes the coordinator address (first node of the allocation),
process count and process id from the SLURM environment. With ``--per gpu`` (default) each task
sees one GPU (JAX sets it from SLURM_LOCALID); with ``--per host`` each task drives all GPUs of its
node (BSFT_LOCAL_DEVICE_IDS lists them). Each task writes its own log file.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    LaunchError,
    Parser,
    Runner,
    add_common_args,
    check_config_file,
    launcher_main,
    positive_int,
    train_command,
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=positive_int, required=True)
    p.add_argument("--gpus-per-node", type=positive_int, default=8)
    p.add_argument("--per", choices=("gpu", "host"), default="gpu", help="one process per GPU or per host")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--time", default="24:00:00")
    p.add_argument("--cpus-per-task", type=positive_int, default=None)
    p.add_argument("--job-name", default="bsft")
    p.add_argument("--log-dir", default="slurm_logs")
    p.add_argument("--setup", default="source .venv/bin/activate",
                   help="shell line run before training on every task (environment activation)")
    p.add_argument("--script-out", default="slurm_bsft.sbatch")
    add_common_args(p)
    return p


def sbatch_script(args: argparse.Namespace) -> str:
    tasks_per_node = args.gpus_per_node if args.per == "gpu" else 1
    cpus = args.cpus_per_task or (8 if args.per == "gpu" else 8 * args.gpus_per_node)
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name}",
        f"#SBATCH --nodes={args.nodes}",
        f"#SBATCH --ntasks-per-node={tasks_per_node}",
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --time={args.time}",
        f"#SBATCH --output={args.log_dir}/%x-%j.out",
    ]
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    if args.account:
        lines.append(f"#SBATCH --account={args.account}")
    lines += [
        "set -euo pipefail",
        f"mkdir -p {args.log_dir}",
        "# SIGTERM reaches every task on preemption/timeout: the trainer saves a checkpoint and exits.",
        "export PYTHONUNBUFFERED=1",
    ]
    if args.per == "host":
        ids = ",".join(str(i) for i in range(args.gpus_per_node))
        lines.append(f"export BSFT_LOCAL_DEVICE_IDS={ids}")
    train = train_command(args.config, args.overrides)
    lines.append(
        f"srun --kill-on-bad-exit=1 --output={args.log_dir}/%x-%j-task%t.log "
        f"bash -c '{args.setup} && {train}'"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; a missing sbatch, failed submission or bad argument is one ``error:`` line, exit 2."""
    return launcher_main(lambda: _submit(build_parser().parse_args(argv)))


def _submit(args: argparse.Namespace) -> int:
    if "'" in args.setup or any("'" in o for o in args.overrides):
        raise LaunchError("--setup and overrides must not contain single quotes")
    check_config_file(args.config, os.getcwd())  # sbatch runs the tasks in the folder it is called from
    script = sbatch_script(args)
    run = Runner(args.dry_run)
    if args.dry_run:
        print(f"# {args.script_out}:")
        print(script, end="")
    else:
        with open(args.script_out, "w") as f:
            f.write(script)
    run(["sbatch", args.script_out])
    return 0


if __name__ == "__main__":
    sys.exit(main())
