"""``python -m bsft_jax.serve --checkpoint RUN_DIR`` (or ``--hf_path DIR|builtin:NAME``): an OpenAI-compatible server.

Routes: ``POST /v1/chat/completions`` (``"stream": true`` for server-sent events), ``GET /v1/models``,
``GET /health``. A BehaviorSFT run reports the behavior it chose as ``choices[0].message.behavior``
and takes ``"behavior": NAME`` to force one. ``--api_key`` (or ``$BSFT_SERVE_API_KEY``; ``--api-key``
is accepted too) makes ``/v1/*`` require ``Authorization: Bearer KEY``. SIGTERM or Ctrl-C: in-flight
requests finish, then the process exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from absl import flags

from bsft_jax.errors import cli_boundary
from bsft_jax.serve.batcher import Batcher
from bsft_jax.serve.chat import load_served
from bsft_jax.serve.engine import Engine
from bsft_jax.serve.protocol import Limits
from bsft_jax.setup.cli import parse_flags, setup_logging

log = logging.getLogger("bsft_jax.serve")
API_KEY_ENV = "BSFT_SERVE_API_KEY"


def define_flags():
    fv = flags.FlagValues()
    flags.DEFINE_string("checkpoint", "", "training run directory to serve (its newest checkpoint, or --step)",
                        flag_values=fv)
    flags.DEFINE_integer("step", -1, "checkpoint step of --checkpoint (-1: newest)", flag_values=fv)
    flags.DEFINE_string("hf_path", "", "HF model folder or builtin:<name> to serve instead of a run", flag_values=fv)
    flags.DEFINE_string("model_name", "", "model id clients send (default: the folder's or builtin's name)",
                        flag_values=fv)
    flags.DEFINE_string("host", "127.0.0.1", "address to listen on (0.0.0.0 for every interface)", flag_values=fv)
    flags.DEFINE_integer("port", 8000, "port to listen on", flag_values=fv)
    flags.DEFINE_string("api_key", None, f"require 'Authorization: Bearer KEY' on /v1/* (or set ${API_KEY_ENV})",
                        flag_values=fv)
    flags.DEFINE_string("dtype", "float32", "compute dtype of the model", flag_values=fv)
    flags.DEFINE_integer("max_context", 0, "prompt + reply tokens per request (0: the model's own limit)",
                         flag_values=fv)
    flags.DEFINE_integer("max_tokens_limit", 1024, "largest max_tokens a request may ask for", flag_values=fv)
    flags.DEFINE_integer("default_max_tokens", 256, "reply budget of a request without max_tokens", flag_values=fv)
    flags.DEFINE_integer("max_batch_size", 8, "requests decoded together in one batch (padded to a power of two)",
                         flag_values=fv)
    flags.DEFINE_integer("batch_wait_ms", 20, "how long a request waits for others to share its batch",
                         flag_values=fv)
    flags.DEFINE_integer("max_queue", 64, "requests waiting for the device before new ones get 429", flag_values=fv)
    flags.DEFINE_integer("decode_chunk", 8, "decode steps per device call (streams and cancellations act between "
                         "calls)", flag_values=fv)
    flags.DEFINE_bool("log_requests", False, "log request bodies (off: only token counts are logged)",
                      flag_values=fv)
    return fv


def dashes_to_underscores(argv: list[str]) -> list[str]:
    """``--api-key=X`` -> ``--api_key=X`` (vLLM's spelling), leaving values alone."""
    out = []
    for arg in argv:
        if arg.startswith("--") and not arg.startswith("---"):
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + eq + value
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    fv = define_flags()
    argv = sys.argv if argv is None else argv
    code = parse_flags(fv, [argv[0], *dashes_to_underscores(argv[1:])], __doc__)
    if code is not None:
        return code
    setup_logging()
    return cli_boundary(lambda: serve(fv))


def serve(fv) -> int:
    """Loads the model and runs uvicorn until SIGTERM / SIGINT (in-flight requests finish first)."""
    # fastapi and uvicorn are the optional extra 'serve': only a running server needs them
    import uvicorn

    from bsft_jax.serve.app import create_app

    served = load_served(checkpoint=fv.checkpoint, hf_path=fv.hf_path, step=None if fv.step < 0 else fv.step,
                         dtype=fv.dtype, name=fv.model_name, max_context=fv.max_context)
    engine = Engine(served.model, eos_ids=served.eos_ids, pad_id=served.pad_id, max_batch_size=fv.max_batch_size,
                    chunk=fv.decode_chunk)
    batcher = Batcher(engine, max_queue=fv.max_queue, max_wait_s=fv.batch_wait_ms / 1000)
    api_key = fv.api_key or os.environ.get(API_KEY_ENV) or None
    app = create_app(served, batcher, limits=Limits(fv.max_tokens_limit, fv.default_max_tokens), api_key=api_key,
                     log_requests=fv.log_requests)
    log.info("listening on http://%s:%d (API key %s)", fv.host, fv.port, "required" if api_key else "not required")
    # uvicorn stops gracefully on SIGTERM / SIGINT, then raises the signal again under the handler it
    # found: with the default one the process would die by the signal (status -15) after a clean stop.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(uvicorn.Config(app, host=fv.host, port=fv.port, log_level="info", access_log=True)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
