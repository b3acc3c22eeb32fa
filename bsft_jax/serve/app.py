"""The HTTP layer: a FastAPI app with ``/v1/chat/completions``, ``/v1/models`` and ``/health``.

Handlers never touch the device: they check the request (:mod:`~bsft_jax.serve.protocol`), hand a
:class:`~bsft_jax.serve.batcher.Job` to the :class:`~bsft_jax.serve.batcher.Batcher` and turn its events
into one JSON reply or a server-sent-event stream. Every error is OpenAI's error body; an unexpected
exception is a 500 for that request only. With an API key, ``/v1/*`` needs ``Authorization: Bearer
KEY`` (``/health`` stays open for load balancers). Request bodies and the key are never logged; each
request logs one line of counts (``log_requests=True`` adds the body).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bsft_jax.serve.batcher import Batcher, Job
from bsft_jax.serve.chat import ReplyText, ServedModel
from bsft_jax.serve.protocol import (
    APIError,
    ChatRequest,
    Limits,
    chunk,
    completion,
    completion_id,
    error_body,
    parse_chat_request,
    parse_json,
    sse,
    usage,
)

log = logging.getLogger("bsft_jax.serve")
DISCONNECT_POLL_S = 0.5


def create_app(served: ServedModel, batcher: Batcher, *, limits: Limits | None = None, api_key: str | None = None,
               log_requests: bool = False) -> FastAPI:
    """The app; its lifespan starts the batcher and, at shutdown (after uvicorn let in-flight requests
    finish), stops it."""
    service = ChatService(served, batcher, limits or Limits(), api_key, log_requests)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        log.info("serving %s as %r (behaviors: %s)", served.source, served.name, served.behaviors or "none")
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.stop)
            log.info("stopped after %d batches", batcher.batches)

    app = FastAPI(title="bsft_jax", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _bug)
    app.add_api_route("/health", service.health, methods=["GET"])
    app.add_api_route("/v1/models", service.models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", service.chat_completions, methods=["POST"])
    return app


async def _api_error(_: Request, e: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status in (429, 503) else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(str(e.detail), "invalid_request_error"), status_code=e.status_code)


async def _bug(_: Request, e: Exception) -> JSONResponse:
    log.exception("unexpected error")
    return JSONResponse(error_body(f"internal error: {type(e).__name__}", "server_error"), status_code=500)


class ChatService:
    """The route handlers of one served model."""

    def __init__(self, served: ServedModel, batcher: Batcher, limits: Limits, api_key: str | None,
                 log_requests: bool):
        self.served, self.batcher, self.limits = served, batcher, limits
        self._api_key, self.log_requests = api_key, log_requests

    def authorize(self, request: Request) -> None:
        """Nothing without a key; with one, a 401 unless ``Authorization: Bearer <key>``."""
        if self._api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.served.name, **self.batcher.stats()}

    async def models(self, request: Request) -> dict[str, Any]:
        self.authorize(request)
        entry = {"id": self.served.name, "object": "model", "created": 0, "owned_by": "bsft_jax",
                 "max_model_len": self.served.max_context}
        if self.served.behavior_ids is not None:
            entry["behaviors"] = self.served.behaviors
        return {"object": "list", "data": [entry]}

    async def chat_completions(self, request: Request) -> Any:
        self.authorize(request)
        body = parse_json(await request.body())
        if self.log_requests:
            log.info("request body: %s", json.dumps(body)[:4000])
        chat = parse_chat_request(body, self.served, self.limits)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        job = Job(request=chat, reply=ReplyText(self.served, chat.stops),
                  emit=lambda kind, payload: loop.call_soon_threadsafe(events.put_nowait, (kind, payload)))
        self.batcher.submit(job)
        cid = completion_id()
        if chat.stream:
            return StreamingResponse(self._stream(job, events, chat, cid), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._collect(request, job, events, chat, cid)

    def behavior_field(self, behavior: str | None) -> dict[str, Any]:
        """``{"behavior": name}`` (None when the model chose no behavior token); {} for a model without them."""
        return {} if self.served.behavior_ids is None else {"behavior": behavior}

    async def _collect(self, request: Request, job: Job, events: asyncio.Queue, chat: ChatRequest, cid: str) -> Any:
        """The whole reply as one ``chat.completion``; a client that hangs up cancels the job."""
        start, behavior = time.monotonic(), None
        try:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                except TimeoutError:
                    if await request.is_disconnected():
                        log.info("%s: client disconnected while waiting; its row is freed", cid)
                        return None
                    continue
                if kind == "start":
                    behavior = payload
                elif kind == "error":
                    raise APIError(500, payload, kind="server_error")
                elif kind == "done":
                    self._log_done(cid, chat, payload, start)
                    ids = payload["token_ids"]
                    return completion(cid, self.served.name, payload["text"], payload["finish_reason"],
                                      self.behavior_field(behavior), len(chat.prompt_ids),
                                      token_ids=ids if chat.return_token_ids else None, prompt_ids=chat.prompt_ids,
                                      completion_tokens=len(ids))
        finally:
            job.cancel()  # no-op once finished; frees the row if the handler was cancelled

    async def _stream(self, job: Job, events: asyncio.Queue, chat: ChatRequest, cid: str) -> AsyncIterator[bytes]:
        """Server-sent events: role and behavior first, then text pieces, the finish reason, usage, [DONE]."""
        start, created, name = time.monotonic(), int(time.time()), self.served.name
        try:
            while True:
                kind, payload = await events.get()
                if kind == "start":
                    yield sse(chunk(cid, name, created, {"role": "assistant", "content": "",
                                                         **self.behavior_field(payload)}))
                elif kind == "delta":
                    yield sse(chunk(cid, name, created, {"content": payload}))
                elif kind == "error":
                    yield sse(error_body(payload, "server_error"))
                    break
                elif kind == "done":
                    self._log_done(cid, chat, payload, start)
                    for event in self._stream_end(chat, payload, cid, created):
                        yield event
                    break
            yield sse("[DONE]")
        finally:
            if not job.finished:
                log.info("%s: client disconnected mid-stream; its row is freed", cid)
            job.cancel()

    def _stream_end(self, chat: ChatRequest, payload: dict[str, Any], cid: str, created: int) -> list[bytes]:
        ids = payload["token_ids"]
        extra = {"token_ids": ids} if chat.return_token_ids else None
        events = [sse(chunk(cid, self.served.name, created, {}, payload["finish_reason"], extra))]
        if chat.include_usage:
            final = chunk(cid, self.served.name, created, {})
            final["choices"], final["usage"] = [], usage(len(chat.prompt_ids), len(ids))
            events.append(sse(final))
        return events

    @staticmethod
    def _log_done(cid: str, chat: ChatRequest, payload: dict[str, Any], start: float) -> None:
        log.info("%s: %d prompt + %d reply tokens in %.2fs (%s)%s", cid, len(chat.prompt_ids),
                 len(payload["token_ids"]), time.monotonic() - start, payload["finish_reason"],
                 f", forced {chat.behavior}" if chat.behavior else "")
