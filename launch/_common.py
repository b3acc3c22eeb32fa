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
    """Runs a launcher's work behind the shared CLI boundary: a :class:`LaunchError` is one line, exit 2.

    Parse the arguments inside ``work`` (with a :class:`Parser`) so that a bad argument is one line too.
    """
    return cli_boundary(work)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is a :class:`LaunchError` (one ``error:`` line, exit 2), not usage + error."""

    def error(self, message: str):  # type: ignore[override]
        raise LaunchError(f"{message}; see {self.prog} --help")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count of nodes, GPUs, processes, slices)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def check_config_file(path: str, base: str) -> None:
    """A local ``--config`` must exist (a relative path: under ``base``, where the job runs); URLs are not checked."""
    if "://" in path:
        return
    full = path if os.path.isabs(path) else os.path.join(base, path)
    if not os.path.isfile(full.split(":", 1)[0]) and not os.path.isfile(full):
        raise LaunchError(f"--config {path}: no such file (looked in {base}); the recipes are in configs/")


def train_command(config: str, overrides: Sequence[str], *, python: str = "python3", module: str = "bsft_jax.train"
                  ) -> str:
    """The shell command every worker runs: ``python -m bsft_jax.train --config X --config.a=b ...``."""
    return shlex.join([python, "-m", module, "--config", config, *overrides])


def storage_overrides(run_dir: str | None, model: str | None) -> list[str]:
    """``--config.run_dir`` / ``--config.model.hf_path`` for ``--run-dir`` / ``--model``.

    A multi-host run needs one run directory that every host reads and writes (a bucket or NFS):
    a relative path would be each worker's own disk, so it is refused here already.
    """
    out = []
    for flag, value, field in (("--run-dir", run_dir, "run_dir"), ("--model", model, "model.hf_path")):
        if not value:
            continue
        if "://" not in value and not value.startswith("/"):
            raise LaunchError(f"{flag} {value!r}: give a bucket (gs://bucket/path) or a shared absolute path (NFS); "
                             "a relative path is each worker's own disk")
        out.append(f"--config.{field}={value}")
    return out


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config file, e.g. configs/qwen2_5_7b_behaviorsft.py")
    parser.add_argument("--run-dir", default=None,
                        help="run directory every host shares, e.g. gs://my-bucket/runs/qwen7b (sets config.run_dir)")
    parser.add_argument("--model", default=None,
                        help="HF model folder every host reads, e.g. gs://my-bucket/models/Qwen2.5-7B-Instruct "
                             "(sets config.model.hf_path)")
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

    def capture(self, argv: Sequence[str]) -> str:
        """Runs ``argv`` and returns its stdout (printed first; in dry-run mode returns '')."""
        print(("[dry-run] " if self.dry_run else "+ ") + shlex.join(argv), file=self.out, flush=True)
        if self.dry_run:
            return ""
        return subprocess.run(list(argv), stdout=subprocess.PIPE, text=True).stdout

    def probe(self, argv: Sequence[str]) -> bool:
        """Runs a read-only check (e.g. 'does the TPU exist?'); in dry-run mode prints it and assumes False."""
        print(("[dry-run] " if self.dry_run else "+ ") + shlex.join(argv), file=self.out, flush=True)
        if self.dry_run:
            return False
        try:
            return subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        except FileNotFoundError:
            raise LaunchError(f"{argv[0]}: not found on PATH; install it or run from a machine that has it") from None
