"""A fault-injecting HTTP proxy in front of the GCS emulator: a bucket that answers 503 or drops connections.

:class:`FaultProxy` forwards every request to the emulator, except a set fraction, chosen by a seeded
random stream, which instead gets one of the configured faults:

* ``"503"``: a ``503 Service Unavailable`` answer (a GCS JSON error body), the request not applied;
* ``"429"``: ``429 Too Many Requests``, the request not applied;
* ``"drop"``: the connection is closed without an answer, the request not applied;
* ``"drop_after"``: the request *is* applied, then the connection is closed without an answer (the
  client cannot know it went through: what a retry must survive).

The fraction can be changed while it runs (``proxy.fraction = 1.0``), from the process that runs it,
or from any other with a request to ``/__faults__?fraction=F`` (answered by the proxy itself), e.g.
from a training subprocess at a chosen step. Point the clients at :attr:`url` (see
:func:`tests.integration.gcs_emulator.emulator_env`).
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("503", "drop")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade",
               "content-length"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self._body()
        if self.path.startswith("/__faults__"):
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            if "fraction" in query:
                proxy.fraction = float(query["fraction"][0])
            return self._answer(200, json.dumps({"fraction": proxy.fraction, **proxy.counts}).encode())
        fault = proxy._draw()
        if fault in ("503", "429"):
            code = int(fault)
            msg = json.dumps({"error": {"code": code, "message": f"injected {code}",
                                        "errors": [{"reason": "backendError"}]}}).encode()
            return self._answer(code, msg, {"Content-Type": "application/json"})
        if fault == "drop":
            return self._drop()
        status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
        if fault == "drop_after":
            return self._drop()
        return self._answer(status, data, headers)

    def _answer(self, status: int, data: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that hung up first: nothing to report
        pass


class FaultProxy:
    """``with FaultProxy(upstream_url, fraction=0.2, seed=0) as proxy:`` a proxy at ``proxy.url``."""

    def __init__(self, upstream: str, *, fraction: float = 0.0, faults: tuple[str, ...] = FAULTS, seed: int = 0):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.fraction = fraction
        self.faults = faults
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.counts = {"forwarded": 0, **{f: 0 for f in ("503", "429", "drop", "drop_after")}}
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _draw(self) -> str | None:
        with self._lock:
            if self.fraction > 0 and self._rng.random() < self.fraction:
                fault = self._rng.choice(self.faults)
                self.counts[fault] += 1
                return fault
            self.counts["forwarded"] += 1
            return None

    def _forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            out_headers = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            out_headers["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=out_headers)
            resp = conn.getresponse()
            data = resp.read()
            kept = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP}
            return resp.status, kept, data
        finally:
            conn.close()

    def set_fraction(self, fraction: float) -> None:
        """Changes the fraction of failed requests from now on."""
        self.fraction = fraction

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def set_remote_fraction(proxy_url: str, fraction: float) -> dict:
    """Sets the fraction of a proxy running in another process; returns its counts so far."""
    with urllib.request.urlopen(f"{proxy_url}/__faults__?fraction={fraction}", timeout=10) as r:
        return json.loads(r.read())
