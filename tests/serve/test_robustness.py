"""Load and bad input: concurrent requests share batches (no recompiles), every bad request is a 4xx naming
its field while the server keeps serving, a client that hangs up frees its row, a full queue answers 429,
and SIGTERM lets the in-flight request finish before the process exits 0 (a real process:
tests/integration/test_serve_process.py)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from .conftest import API_KEY

MAX = 12


def post(server, body: bytes | dict, *, key: str | None = API_KEY) -> tuple[int, dict]:
    """POST /v1/chat/completions with a raw body; (status, JSON reply)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_concurrent_requests_share_batches_and_equal_their_solo_replies(server, client, reference):
    scenes = reference.scenes[:4]
    want = [reference.generate(m, MAX) for m in scenes]

    def ask(messages):
        reply = client.chat.completions.create(model="bsft", messages=messages, max_tokens=MAX, temperature=0,
                                               extra_body={"return_token_ids": True})
        return reply.choices[0].token_ids

    def burst(order):
        # The batcher waits (up to 10 s) until the 4 requests fill its batch: on a loaded machine they can
        # arrive further apart than the 200 ms wait, and then split into batches of other sizes (other
        # shapes) from one burst to the next. Filled, both bursts are one batch of the same shape.
        before, wait = server.health(), server.batcher.max_wait_s
        server.batcher.max_wait_s = 10.0
        try:
            with ThreadPoolExecutor(len(order)) as pool:
                got = list(pool.map(ask, [scenes[i] for i in order]))
        finally:
            server.batcher.max_wait_s = wait
        after = server.health()
        return got, after["batches"] - before["batches"], after["rows"] - before["rows"], after["compiles"]

    got, batches, rows, compiles = burst([0, 1, 2, 3])
    assert got == want  # greedy rows do not depend on what shares their batch
    assert rows == 4 and batches < 4, (batches, rows)  # requests that arrive together share device calls
    got, batches, rows, again = burst([3, 2, 1, 0])
    assert got == want[::-1] and batches < 4
    assert again == compiles  # the same buckets: traffic does not recompile


BAD_HTTP = {
    # name -> (body, status, param)
    "malformed JSON": (b'{"messages": [', 400, None),
    "unknown model": ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    "unknown behavior": ({"messages": [{"role": "user", "content": "hi"}], "behavior": "panic"}, 400, "behavior"),
    "prompt longer than the context": ({"messages": [{"role": "user", "content": "hello " * 3000}]}, 400,
                                       "messages"),
    "max_tokens out of range": ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400,
                                "max_tokens"),
    "max_tokens past the context": ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1024}, 400,
                                    "max_tokens"),
    "n > 1": ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n"),
}


def test_every_bad_request_is_a_4xx_naming_its_field_and_the_server_keeps_serving(server, client, reference):
    for name, (body, status, param) in BAD_HTTP.items():
        got, reply = post(server, body)
        assert got == status, (name, reply)
        assert reply["error"]["param"] == param and reply["error"]["message"] and reply["error"]["type"], name
    status, reply = post(server, {"messages": reference.scenes[0], "max_tokens": 2}, key=None)
    assert status == 401 and reply["error"]["code"] == "invalid_api_key"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url + "/v1/nope", timeout=30)
    assert e.value.code == 404 and "error" in json.loads(e.value.read())
    with pytest.raises(openai.BadRequestError) as e:  # the official client sees the same body
        client.chat.completions.create(model="bsft", messages=reference.scenes[0], n=2)
    assert e.value.body["param"] == "n"
    reply = client.chat.completions.create(model="bsft", messages=reference.scenes[0], max_tokens=MAX, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length") and server.health()["status"] == "ok"


@contextlib.contextmanager
def slow_engine(server, seconds: float = 0.05):
    """Each decode call of the shared server's engine takes ``seconds`` longer (long replies last long)."""
    step = server.engine.step

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return step(*args, **kwargs)

    server.engine.step = slow
    try:
        yield
    finally:
        server.engine.step = step


def _wait_idle(server, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = server.health()
        if health["running"] == 0 and health["queued"] == 0:
            return health
        time.sleep(0.1)
    raise AssertionError(f"the server did not go idle: {server.health()}")


def test_a_client_that_hangs_up_mid_stream_frees_its_row(server, client, reference):
    # MAX tokens, the token budget every test here uses: no new program to compile. The first chunk (the
    # behavior token) comes from the prefill; the hang-up is seen during the first slowed decode call, so
    # the row is dropped before its end.
    kwargs = dict(model="bsft", messages=reference.scenes[0], max_tokens=MAX, extra_body={"behavior": "answer"})
    client.chat.completions.create(**kwargs)  # compiles this bucket, so the cancellation is not stuck behind it
    _wait_idle(server)
    before = server.health()["cancelled"]
    with slow_engine(server, seconds=2.0):  # 12 tokens, 8 per call: two calls, over 4 s to the end
        stream = client.chat.completions.create(stream=True, **kwargs)
        first = next(iter(stream))
        assert first.choices[0].delta.behavior == "answer"
        stream.close()  # hang up after the first chunk
        health = _wait_idle(server, timeout=300)
    assert health["cancelled"] == before + 1  # the row was stopped, not decoded to its end
    assert "client disconnected mid-stream" in server.log()
    reply = client.chat.completions.create(model="bsft", messages=reference.scenes[0], max_tokens=MAX, temperature=0)
    assert reply.choices[0].message.content is not None


def test_a_full_queue_answers_429_and_the_server_recovers(server, client, reference):
    _wait_idle(server)
    maxsize = server.batcher.queue.maxsize
    server.batcher.queue.maxsize = 1
    results: list[tuple[int, dict]] = []
    body = {"messages": reference.scenes[0], "max_tokens": MAX, "behavior": "answer"}  # a compiled bucket
    try:
        with slow_engine(server, seconds=3.0):  # each request decodes for over 6 s (sleeping, not computing)
            running = threading.Thread(target=lambda: results.append(post(server, body)))
            running.start()
            deadline = time.monotonic() + 60
            while server.health()["running"] == 0:  # the first request is decoding...
                assert time.monotonic() < deadline
                time.sleep(0.05)
            waiting = threading.Thread(target=lambda: results.append(post(server, body)))
            waiting.start()
            while server.health()["queued"] == 0:  # ...the second one waits in the queue (size 1)...
                assert time.monotonic() < deadline
                time.sleep(0.05)
            status, reply = post(server, body)  # ...so the third is refused at once
            assert status == 429 and reply["error"]["code"] == "queue_full", reply
            running.join(120)
            waiting.join(120)
    finally:
        server.batcher.queue.maxsize = maxsize
    assert [s for s, _ in results] == [200, 200]
    assert client.chat.completions.create(model="bsft", messages=reference.scenes[0], max_tokens=2).choices
