"""The server under test: a tiny trained BehaviorSFT run, served on free loopback ports by the app of
``python -m bsft_jax.serve`` on a thread of the test process, driven by the official ``openai`` client.
The server as its own process: tests/integration/test_serve_process.py."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
import urllib.request

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API_KEY = "test-key-0123"  # the key the shared server requires; the tests check it never reaches the log


def toy_behavior_run(run_dir: str, steps: int = 40) -> str:
    """The toy demo recipe (BehaviorSFT, item scheme: answer / intervene / hold) trained briefly on 1 device,
    with a high learning rate and first-token weight so it starts its replies with a behavior token."""
    from bsft_jax.train.loop import run
    from tests.toy import toy_demo_config

    cfg = toy_demo_config(run_dir, steps=steps)
    cfg.train.eval_every = -1
    cfg.checkpoint.every_steps = steps
    cfg.optimizer.learning_rate = 1e-2
    cfg.train.first_token_loss_weight = 3.0
    run(cfg, devices=jax.devices()[:1])
    return run_dir


@contextlib.contextmanager
def cache_dir(path: str):
    """``$BSFT_JAX_CACHE`` set to ``path`` inside the block (where the demo data is built and read)."""
    old = os.environ.get("BSFT_JAX_CACHE")
    os.environ["BSFT_JAX_CACHE"] = path
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("BSFT_JAX_CACHE", None)
        else:
            os.environ["BSFT_JAX_CACHE"] = old


@pytest.fixture(scope="session")
def serve_cache(toy_cache):
    """The demo-data cache of the served run (``$BSFT_SERVE_TEST_CACHE`` reuses one across sessions)."""
    return os.environ.get("BSFT_SERVE_TEST_CACHE") or toy_cache


@pytest.fixture(scope="session")
def serve_run_dir(tmp_path_factory, serve_cache):
    """The toy BehaviorSFT run (``$BSFT_SERVE_TEST_RUN``: one :func:`toy_behavior_run` built before, with
    ``$BSFT_SERVE_TEST_CACHE`` its cache, to skip the training when iterating on a loaded machine)."""
    if os.environ.get("BSFT_SERVE_TEST_RUN"):
        return os.environ["BSFT_SERVE_TEST_RUN"]
    with cache_dir(serve_cache):
        return toy_behavior_run(str(tmp_path_factory.mktemp("serve") / "bsft"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """The app of ``python -m bsft_jax.serve`` (the same pieces its ``serve`` builds) run by uvicorn on a
    thread of the test process: no second model load. Its log records are kept in ``records``."""

    def __init__(self, run_dir: str = "", *, hf_path: str = "", name: str = "", **engine_args):
        import uvicorn

        from bsft_jax.serve.app import create_app
        from bsft_jax.serve.batcher import Batcher
        from bsft_jax.serve.chat import load_served
        from bsft_jax.serve.engine import Engine

        self.served = load_served(checkpoint=run_dir, hf_path=hf_path, name=name)
        batch_wait_s = engine_args.pop("batch_wait_s", 0.2)
        self.engine = Engine(self.served.model, eos_ids=self.served.eos_ids, pad_id=self.served.pad_id, **engine_args)
        self.batcher = Batcher(self.engine, max_queue=16, max_wait_s=batch_wait_s)
        self.port = free_port()
        self.records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: self.records.append(record.getMessage())
        self._handler = handler
        for name in ("bsft_jax.serve", "uvicorn", "uvicorn.access", "uvicorn.error"):
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).setLevel(logging.INFO)
        app = create_app(self.served, self.batcher, api_key=API_KEY)
        self.uvicorn = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None))
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.uvicorn.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=10) as r:
            return json.loads(r.read())

    def log(self) -> str:
        return "\n".join(self.records)

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(120)
        for name in ("bsft_jax.serve", "uvicorn", "uvicorn.access", "uvicorn.error"):
            logging.getLogger(name).removeHandler(self._handler)


@pytest.fixture(scope="session")
def server(serve_run_dir):
    """The shared server: the toy BehaviorSFT run, an API key, batches of up to 4 (200 ms to fill one)."""
    s = ThreadServer(serve_run_dir, name="bsft", max_batch_size=4)
    yield s
    s.stop()
    assert not s.thread.is_alive()
    assert API_KEY not in s.log() and "request body" not in s.log()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=1800)  # compiles on a busy CPU


@dataclasses.dataclass
class Reference:
    """The run as the evaluator loads it: model, tokenizer, the evaluator's EOS ids and behavior ids, and
    the chat messages of a few demo test scenes (the prompts the run was trained on)."""

    model: object
    tokenizer: object
    eos_ids: list[int]
    behavior_ids: dict[str, int]
    scenes: list[list[dict[str, str]]]
    _sampler: object = None
    _replies: dict = dataclasses.field(default_factory=dict)

    def prompt(self, messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, messages, max_new_tokens: int, force: int | None = None) -> list[int]:
        """``bsft_jax.generate``, greedy, as the evaluator calls it. ``generate`` builds a Sampler (and compiles
        its programs) per call; its Sampler is built once here and each reply kept, so the tests that ask for
        the same reply again compile and decode nothing."""
        from bsft_jax.decode.sampler import Sampler

        prompt = self.prompt(messages)
        key = (tuple(prompt), max_new_tokens, force)
        if key not in self._replies:
            if self._sampler is None:
                self._sampler = Sampler(self.model)  # what generate(self.model, ...) builds
            self._replies[key] = self._sampler([prompt], max_new_tokens=max_new_tokens, eos_ids=self.eos_ids,
                                               force_first_token=force).tokens[0]
        return self._replies[key]


@pytest.fixture(scope="session")
def reference(serve_run_dir, serve_cache):
    from bsft_jax.data.format import Formatter
    from bsft_jax.evaluate.compare import load_run
    from bsft_jax.evaluate.core import as_records
    from bsft_jax.setup.sources import load_split

    model, tokenizer, settings, style, _ = load_run(serve_run_dir, None, "float32", None)
    assert style == "behavior_sft"
    spec = settings.behavior.spec
    formatter = Formatter(tokenizer, style=style, spec=spec)
    with cache_dir(serve_cache):
        records = as_records(load_split(settings.data, spec, "test"), spec)[:6]
    return Reference(model=model, tokenizer=tokenizer, eos_ids=sorted({*model.config.stop_token_ids,
                                                                         formatter.end_id}),
                     behavior_ids=dict(formatter.behavior_ids), scenes=[formatter.messages(r) for r in records])
