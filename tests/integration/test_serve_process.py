"""``python -m bsft_jax.serve`` as its own process (moved from tests/serve/, whose other tests run the app in
the test process): the module entry point refuses a bad command line in one line, and SIGTERM lets the
in-flight request finish before the process exits 0."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from tests.processes import ROOT
from tests.serve.conftest import free_port, serve_cache, serve_run_dir  # noqa: F401  (pytest fixtures)


@dataclasses.dataclass
class Server:
    """A ``python -m bsft_jax.serve`` subprocess; its combined output goes to ``log_path``."""

    proc: subprocess.Popen
    port: int
    log_path: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=10) as r:
            return json.loads(r.read())

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(log_dir, *args: str, cache: str | None = None, timeout: float = 900) -> Server:
    """Starts the server with ``args`` on a free port and waits until ``/health`` answers."""
    port = free_port()
    log_path = os.path.join(str(log_dir), f"server-{port}.log")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env.pop("XLA_FLAGS", None)
    if cache:
        env["BSFT_JAX_CACHE"] = cache
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bsft_jax.serve", "--port", str(port), *args], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{server.log()[-3000:]}")
        try:
            server.health()
            return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise AssertionError(f"server did not answer /health in {timeout}s:\n{server.log()[-3000:]}")


def test_the_module_entry_point_says_the_same():
    done = subprocess.run([sys.executable, "-m", "bsft_jax.serve", "--checkpoint", "/nonexistent/run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), done.stderr[-2000:]
    assert "is not a folder" in lines[0]


def test_sigterm_finishes_the_request_in_flight_then_exits_0(serve_run_dir, serve_cache, tmp_path):  # noqa: F811
    # The command line as a user runs it: vLLM's --api-key spelling, one row per batch, one token per call.
    proc = start_server(tmp_path, "--checkpoint", serve_run_dir, "--model_name", "bsft", "--api-key", "k3y",
                        "--max_batch_size", "1", "--decode_chunk", "1", cache=serve_cache)
    try:
        from openai import OpenAI

        client = OpenAI(base_url=proc.url + "/v1", api_key="k3y", max_retries=0, timeout=600)
        stream = client.chat.completions.create(model="bsft", messages=[{"role": "user", "content": "hello"}],
                                                max_tokens=600, stream=True, extra_body={"behavior": "answer"})
        chunks = [next(iter(stream))]
        proc.proc.send_signal(15)  # SIGTERM while the reply is being generated
        chunks += list(stream)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish in (["stop"], ["length"]), finish  # the whole reply arrived
        assert proc.proc.wait(300) == 0
    finally:
        proc.stop()
    log = proc.log()
    assert log.index("Shutting down") < log.index("reply tokens in"), log[-2000:]  # finished after the signal
    assert "k3y" not in log
