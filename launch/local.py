"""Start N training processes on this machine, as a multi-host job would, with a loopback coordinator.

    python launch/local.py --num_processes 2 --devices_per_process 2 -- \\
        --config configs/demo_scratch.py --config.run_dir=/tmp/run2p

Each process gets its own process id and ``devices_per_process`` fake CPU devices
(``JAX_NUM_CPU_DEVICES``), and the coordinator settings as config overrides
(``--config.distributed.coordinator_address=127.0.0.1:PORT`` ...), so ``jax.distributed`` runs
exactly as on a pod (gloo collectives on CPU). The processes run in the caller's folder (relative
paths mean what they mean to one ``python -m``). Output lines are prefixed ``[pK]`` and keep their
stream (a process's ``error:`` line arrives on stderr); with
``--log_dir`` each process also writes ``process_K.log``. If one process fails the others are
stopped; SIGTERM/SIGINT are forwarded to all of them. The exit status is the first non-zero
status of a process (0 if all succeed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import LaunchError, Parser, launcher_main, positive_int  # stdlib + bsft_jax.errors only

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_commands(num_processes: int, port: int, module: str, args: list[str]) -> list[list[str]]:
    """The command line of each process (the coordinator settings appended as config overrides)."""
    cmds = []
    for i in range(num_processes):
        cmds.append([sys.executable, "-m", module, *args,
                     f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                     f"--config.distributed.num_processes={num_processes}",
                     f"--config.distributed.process_id={i}"])
    return cmds


_LOG_LOCK = threading.Lock()  # the stdout and stderr pumps of one process share its log file


def _pump(stream, prefix: str, log_file, out) -> None:
    """Copies a child's stream line by line to ``out`` (our stdout or stderr, or None), prefixed, and to its log."""
    for line in iter(stream.readline, ""):
        if out is not None:
            out.write(f"{prefix} {line}")
            out.flush()
        if log_file is not None:
            with _LOG_LOCK:
                log_file.write(line)
                log_file.flush()
    stream.close()


def check_module(module: str) -> None:
    """``python -m module`` must find it (searching this checkout, as the processes do)."""
    import importlib.util

    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or an empty / relative name
        found = False
    if not found:
        raise LaunchError(f"--module {module!r}: no such Python module (each process runs python -m {module}); "
                          "e.g. bsft_jax.train")


def _open_logs(log_dir: str | None, n: int) -> list:
    if not log_dir:
        return [None] * n
    try:
        os.makedirs(log_dir, exist_ok=True)
        return [open(os.path.join(log_dir, f"process_{i}.log"), "w") for i in range(n)]
    except OSError as e:
        raise LaunchError(f"--log_dir {log_dir!r}: cannot write the process logs there ({e.strerror}: "
                          f"{e.filename}); give a folder you can write to") from None


@dataclasses.dataclass
class Job:
    """The running processes of one job (:func:`start`), process ``K`` at ``procs[K]``."""

    procs: list[subprocess.Popen]
    threads: list[threading.Thread]
    logs: list

    def close(self) -> None:
        """After the processes exited: the rest of their output, then the log files closed."""
        for t in self.threads:
            t.join(timeout=5)
        for f in self.logs:
            if f is not None:
                f.close()


def start(num_processes: int, args: list[str], *, devices_per_process: int = 1, module: str = "bsft_jax.train",
          port: int = 0, log_dir: str | None = None, platform: str = "cpu", echo: bool = True) -> Job:
    """Starts the processes and returns at once (``echo=False``: their output only to ``log_dir``)."""
    port = port or free_port()
    env = dict(os.environ)
    env["JAX_NUM_CPU_DEVICES"] = str(devices_per_process)
    if platform:
        env["JAX_PLATFORMS"] = platform
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    logs = _open_logs(log_dir, num_processes)
    procs, threads = [], []
    for i, cmd in enumerate(process_commands(num_processes, port, module, args)):
        # In the caller's folder, like one `python -m` there: relative --config, run_dir and data paths
        # mean the same thing with and without the launcher (the checkout is on PYTHONPATH).
        p = subprocess.Popen(cmd, cwd=os.getcwd(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, bufsize=1)
        for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):  # a child's error line stays on stderr
            t = threading.Thread(target=_pump, args=(stream, f"[p{i}]", logs[i], out if echo else None), daemon=True)
            t.start()
            threads.append(t)
        procs.append(p)
    return Job(procs, threads, logs)


def launch(num_processes: int, args: list[str], *, devices_per_process: int = 1, module: str = "bsft_jax.train",
           port: int = 0, log_dir: str | None = None, platform: str = "cpu", timeout: float | None = None) -> int:
    """Runs the processes to completion; returns the job's exit status."""
    job = start(num_processes, args, devices_per_process=devices_per_process, module=module, port=port,
                log_dir=log_dir, platform=platform)
    procs = job.procs

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = _wait(procs, None if timeout is None else time.monotonic() + timeout)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        job.close()
    return status


def _wait(procs: list[subprocess.Popen], deadline: float | None) -> int:
    """Waits for every process; the first failure stops the others (after 5 s), the deadline kills them."""
    status = 0
    while any(p.poll() is None for p in procs):
        failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if failed and not status:
            status = failed[0]
            time.sleep(5.0)  # let the others report their own error first
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        if deadline is not None and time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            status = status or 124
        time.sleep(0.1)
    return status or next((p.returncode for p in procs if p.returncode), 0)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``launch/local.py [options] -- <arguments of the module>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        k = argv.index("--")
        argv, rest = argv[:k], argv[k + 1:]
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_processes", type=positive_int, default=2)
    parser.add_argument("--devices_per_process", type=positive_int, default=1, help="fake CPU devices per process")
    parser.add_argument("--module", default="bsft_jax.train", help="python module each process runs")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    parser.add_argument("--log_dir", default=None, help="also write process_K.log files here")
    parser.add_argument("--platform", default="cpu", help="JAX_PLATFORMS for the processes ('' keeps the default)")
    parser.add_argument("--timeout", type=float, default=None, help="kill the job after this many seconds")

    def work() -> int:
        opts = parser.parse_args(argv)
        check_module(opts.module)
        return launch(opts.num_processes, rest, devices_per_process=opts.devices_per_process, module=opts.module,
                      port=opts.port, log_dir=opts.log_dir, platform=opts.platform, timeout=opts.timeout)

    return launcher_main(work)  # a bad option, module or log folder: one line, exit 2


if __name__ == "__main__":
    sys.exit(main())
