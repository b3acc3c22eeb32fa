"""The OpenAI chat-completions wire format: request checking, error bodies, replies and stream chunks.

Every mistake in a request becomes an :class:`APIError` with an HTTP status and the field it is about,
sent as OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``. Fields the server
does not use (``user``, ``metadata``, ``frequency_penalty``...) are ignored, as most OpenAI-compatible
servers do; fields whose meaning it cannot honour (``n > 1``, ``logprobs``, ``tools``) are rejected.

Extensions: ``behavior`` (force a behavior token; a model without them answers 400) and
``return_token_ids`` (vLLM's name: the reply also carries ``prompt_token_ids`` and ``token_ids``).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bsft_jax.serve.chat import ServedModel

ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS = 4


class APIError(Exception):
    """A request the server answers with ``status`` and an OpenAI-style error body naming ``param``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                             429: "rate_limit_error", 503: "server_overloaded"}.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the server allows per request (the ``--max_tokens_limit`` and ``--default_max_tokens`` flags)."""

    max_tokens: int = 1024
    default_max_tokens: int = 256


@dataclasses.dataclass
class ChatRequest:
    """A checked request: the prompt ids and how to generate."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stops: list[str]
    stream: bool
    include_usage: bool
    behavior: str | None
    force_token: int | None
    return_token_ids: bool


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 naming the problem."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def parse_chat_request(body: Mapping[str, Any], served: ServedModel, limits: Limits) -> ChatRequest:
    """Checks ``body`` field by field (the first bad one is a 4xx naming it); renders the prompt."""
    model = body.get("model")
    if model is not None and model != served.name:
        raise APIError(404, f"The model {model!r} does not exist; this server serves {served.name!r}",
                       param="model", code="model_not_found")
    n = _integer(body, "n", 1, None, 1)
    if n != 1:
        raise APIError(400, f"n={n}: this server returns one choice per request; send n=1 (or leave it out)",
                       param="n", code="unsupported_value")
    for field in ("logprobs", "tools", "functions"):
        if body.get(field):
            raise APIError(400, f"{field!r} is not supported by this server; leave it out", param=field,
                           code="unsupported_parameter")
    messages = _messages(body.get("messages"))
    try:
        prompt_ids = served.prompt_ids(messages)
    except Exception as e:  # a template that rejects the conversation (roles out of order...) raises
        raise APIError(400, f"the chat template cannot render these messages: {e}", param="messages") from None
    room = served.max_context - len(prompt_ids)
    if room < 1:
        raise APIError(400, f"the prompt is {len(prompt_ids)} tokens; this model's context is {served.max_context} "
                       "tokens and the reply needs at least one: shorten the messages", param="messages",
                       code="context_length_exceeded")
    max_tokens = _max_tokens(body, room, limits)
    behavior, force = _behavior(body.get("behavior"), served)
    return ChatRequest(
        prompt_ids=prompt_ids, max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(body, "top_p", 0.0, 1.0, 1.0, low_open=True),
        seed=_integer(body, "seed", None, None, None) if body.get("seed") is not None else secrets.randbits(32),
        stops=_stops(body.get("stop")), stream=_bool(body, "stream"),
        include_usage=_bool(body.get("stream_options") or {}, "include_usage", "stream_options.include_usage"),
        behavior=behavior, force_token=force, return_token_ids=_bool(body, "return_token_ids"))


def _messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object with 'role' and 'content'", param=where)
        role = m.get("role")
        if role not in ROLES:
            raise APIError(400, f"{where}.role={role!r}: expected one of {list(ROLES)}", param=f"{where}.role")
        out.append({"role": "system" if role == "developer" else role, "content": _content(m.get("content"), where)})
    return out


def _content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"{where}.content[{j}]: only text parts ({{'type': 'text', 'text': ...}}) are "
                               "supported", param=f"{where}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"{where}.content must be a string or a list of text parts", param=f"{where}.content")


def _max_tokens(body: Mapping[str, Any], room: int, limits: Limits) -> int:
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    if body.get(field) is None:
        return max(1, min(limits.default_max_tokens, room))
    value = _integer(body, field, 1, limits.max_tokens, None)
    if value > room:
        raise APIError(400, f"{field}={value}: the prompt leaves room for only {room} reply tokens in this model's "
                       f"context; ask for at most {room}", param=field, code="context_length_exceeded")
    return value


def _behavior(behavior: Any, served: ServedModel) -> tuple[str | None, int | None]:
    if behavior is None:
        return None, None
    if not isinstance(behavior, str):
        raise APIError(400, f"behavior must be a string, got {type(behavior).__name__}", param="behavior")
    if served.behavior_ids is None:
        raise APIError(400, f"behavior={behavior!r}: model {served.name!r} has no behavior tokens (it was not "
                       "trained with BehaviorSFT), so no behavior can be forced; leave 'behavior' out",
                       param="behavior", code="unsupported_parameter")
    if behavior not in served.behavior_ids:
        raise APIError(400, f"behavior={behavior!r} is not a behavior of model {served.name!r}; expected one of "
                       f"{served.behaviors}", param="behavior", code="invalid_value")
    return behavior, served.behavior_ids[behavior]


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise APIError(400, f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them",
                       param="stop")
    return stops


def _number(body: Mapping[str, Any], name: str, low: float, high: float, default: float, *,
            low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise APIError(400, f"{name} must be a number, got {value!r}", param=name)
    if value < low or value > high or (low_open and value == low):
        raise APIError(400, f"{name}={value} is out of range {'(' if low_open else '['}{low}, {high}]", param=name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, low: int | None, high: int | None, default: int | None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"{name} must be an integer, got {value!r}", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise APIError(400, f"{name}={value} is out of range [{low}, {high}]", param=name)
    return value


def _bool(body: Mapping[str, Any], name: str, param: str | None = None) -> bool:
    value = body.get(name, False) if isinstance(body, Mapping) else False
    if value is None:
        return False
    if not isinstance(value, bool):
        raise APIError(400, f"{param or name} must be true or false, got {value!r}", param=param or name)
    return value


# ----------------------------------------------------------------------------- replies
def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, text: str, finish_reason: str, behavior_field: Mapping[str, Any],
               prompt_tokens: int, token_ids: Sequence[int] | None = None,
               prompt_ids: Sequence[int] | None = None, completion_tokens: int = 0) -> dict[str, Any]:
    """A ``chat.completion`` object; ``behavior_field`` is ``{"behavior": name}`` or {} (no behavior tokens)."""
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text, **behavior_field},
                              "finish_reason": finish_reason, "logprobs": None}
    out: dict[str, Any] = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                           "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}
    if token_ids is not None:
        choice["token_ids"] = list(token_ids)
        out["prompt_token_ids"] = list(prompt_ids or [])
    return out


def chunk(cid: str, model: str, created: int, delta: Mapping[str, Any], finish_reason: str | None = None,
          extra_choice: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a stream."""
    choice = {"index": 0, "delta": dict(delta), "finish_reason": finish_reason, "logprobs": None,
              **(extra_choice or {})}
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}


def sse(payload: Mapping[str, Any] | str) -> bytes:
    """One server-sent event (``data: ...`` and a blank line)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
