"""Shared by the launchers: build commands as argv lists, print them, run them unless --dry-run."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout: bsft_jax.errors
from bsft_jax.errors import UserError, cli_boundary  # pure Python: launching needs no JAX


class LaunchError(UserError):
    """A launcher cannot go on: a bad argument, a missing tool (gcloud, sbatch, xpk) or a failed command."""


def launcher_main(work: Callable[[], int | None]) -> int:
    """Runs a launcher's work behind the shared CLI boundary: a :class:`LaunchError` is one line, exit 2."""
    return cli_boundary(work)


def train_command(config: str, overrides: Sequence[str], *, python: str = "python3", module: str = "bsft_jax.train"
                  ) -> str:
    """The shell command every worker runs: ``python -m bsft_jax.train --config X --config.a=b ...``."""
    return shlex.join([python, "-m", module, "--config", config, *overrides])


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config file, e.g. configs/qwen2_5_7b_behaviorsft.py")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("overrides", nargs="*",
                        help="passed to bsft_jax.train after '--', e.g. -- --config.optimizer.learning_rate=1e-5")


class Runner:
    """Prints each command (shell-quoted) and runs it unless dry_run."""

    def __init__(self, dry_run: bool, out=sys.stdout):
        self.dry_run = dry_run
        self.out = out

    def __call__(self, argv: Sequence[str], *, check: bool = True) -> int:
        print(("[dry-run] " if self.dry_run else "+ ") + shlex.join(argv), file=self.out, flush=True)
        if self.dry_run:
            return 0
        try:
            return subprocess.run(list(argv), check=check).returncode
        except FileNotFoundError:
            raise LaunchError(f"{argv[0]}: not found on PATH; install it (gcloud: the Google Cloud SDK, sbatch: "
                              "SLURM, xpk: pip install xpk) or run from a machine that has it") from None
        except subprocess.CalledProcessError as e:
            raise LaunchError(f"{shlex.join(argv)[:300]} failed with exit status {e.returncode} (its output is "
                              "above); fix that and rerun") from None

    def probe(self, argv: Sequence[str]) -> bool:
        """Runs a read-only check (e.g. 'does the TPU exist?'); in dry-run mode prints it and assumes False."""
        print(("[dry-run] " if self.dry_run else "+ ") + shlex.join(argv), file=self.out, flush=True)
        if self.dry_run:
            return False
        try:
            return subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        except FileNotFoundError:
            raise LaunchError(f"{argv[0]}: not found on PATH; install it or run from a machine that has it") from None
