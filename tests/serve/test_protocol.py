"""The server's pieces without a server: request checking (status and field of every bad request) and the
reply text (behavior token out, stop strings, held-back text)."""

from __future__ import annotations

import pytest

from bsft_jax.serve.chat import ReplyText, ServedModel, behavior_spec_of
from bsft_jax.serve.protocol import APIError, Limits, parse_chat_request, parse_json

from ..train.common import tiny_tokenizer

LIMITS = Limits(max_tokens=64, default_max_tokens=16)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tiny_tokenizer(str(tmp_path_factory.mktemp("tok")))
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"additional_special_tokens": ["<|behavior:hold|>", "<|behavior:intervene|>"]},
                           replace_extra_special_tokens=False)
    return tok


def served(tokenizer, behaviors: bool = True, context: int = 40) -> ServedModel:
    ids = {n: tokenizer.convert_tokens_to_ids(f"<|behavior:{n}|>") for n in ("hold", "intervene")}
    return ServedModel(name="m", model=None, tokenizer=tokenizer, behavior_ids=ids if behaviors else None,
                       eos_ids=(tokenizer.eos_token_id,), max_context=context, pad_id=0, source="test")


USER = [{"role": "user", "content": "w1 w2 w3"}]

BAD = {
    # body -> (status, param)
    "unknown model": ({"model": "gpt-4", "messages": USER}, 404, "model"),
    "no messages": ({"model": "m"}, 400, "messages"),
    "empty messages": ({"messages": []}, 400, "messages"),
    "message not an object": ({"messages": ["hi"]}, 400, "messages[0]"),
    "bad role": ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    "image part": ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content"),
    "n > 1": ({"messages": USER, "n": 2}, 400, "n"),
    "n not an int": ({"messages": USER, "n": "2"}, 400, "n"),
    "max_tokens 0": ({"messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    "max_tokens over the limit": ({"messages": USER, "max_tokens": 65}, 400, "max_tokens"),
    "max_tokens past the context": ({"messages": USER, "max_tokens": 60}, 400, "max_tokens"),
    "max_completion_tokens": ({"messages": USER, "max_completion_tokens": -1}, 400, "max_completion_tokens"),
    "max_tokens a float": ({"messages": USER, "max_tokens": 2.5}, 400, "max_tokens"),
    "temperature": ({"messages": USER, "temperature": 3}, 400, "temperature"),
    "temperature a string": ({"messages": USER, "temperature": "hot"}, 400, "temperature"),
    "top_p 0": ({"messages": USER, "top_p": 0}, 400, "top_p"),
    "seed": ({"messages": USER, "seed": "x"}, 400, "seed"),
    "stop": ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    "empty stop": ({"messages": USER, "stop": ""}, 400, "stop"),
    "stream": ({"messages": USER, "stream": "yes"}, 400, "stream"),
    "unknown behavior": ({"messages": USER, "behavior": "panic"}, 400, "behavior"),
    "behavior not a string": ({"messages": USER, "behavior": 1}, 400, "behavior"),
    "logprobs": ({"messages": USER, "logprobs": True}, 400, "logprobs"),
    "prompt past the context": ({"messages": [{"role": "user", "content": "w1 " * 60}]}, 400, "messages"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_every_bad_request_is_a_4xx_naming_its_field(tokenizer, case):
    body, status, param = BAD[case]
    with pytest.raises(APIError) as e:
        parse_chat_request(body, served(tokenizer), LIMITS)
    assert (e.value.status, e.value.param) == (status, param), e.value.message
    error = e.value.body()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_forcing_on_a_model_without_behavior_tokens_is_a_400_saying_why(tokenizer):
    with pytest.raises(APIError) as e:
        parse_chat_request({"messages": USER, "behavior": "hold"}, served(tokenizer, behaviors=False), LIMITS)
    assert e.value.status == 400 and e.value.param == "behavior" and "no behavior tokens" in e.value.message


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"\xff\xfe", b""])
def test_malformed_json_is_a_400(raw):
    with pytest.raises(APIError) as e:
        parse_json(raw)
    assert e.value.status == 400 and e.value.code == "invalid_json"


def test_a_good_request_is_read_field_by_field(tokenizer):
    s = served(tokenizer)
    req = parse_chat_request({"model": "m", "messages": [{"role": "developer", "content": "w4"}, *USER],
                              "max_completion_tokens": 5, "max_tokens": 9, "temperature": 0.5, "top_p": 0.9,
                              "seed": 3, "stop": "w9", "stream": True, "stream_options": {"include_usage": True},
                              "behavior": "intervene", "user": "ignored"}, s, LIMITS)
    assert req.prompt_ids == s.prompt_ids([{"role": "system", "content": "w4"}, *USER])
    assert (req.max_tokens, req.temperature, req.top_p, req.seed, req.stops) == (5, 0.5, 0.9, 3, ["w9"])
    assert req.stream and req.include_usage and req.force_token == s.behavior_ids["intervene"]
    default = parse_chat_request({"messages": USER}, s, LIMITS)
    assert default.max_tokens == 16 and default.temperature == 1.0 and default.behavior is None


def test_behavior_tokens_are_found_in_an_exported_tokenizer(tokenizer):
    spec = behavior_spec_of(tokenizer)
    assert spec is not None and set(spec.names) == {"hold", "intervene"}


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_reply_text_reads_the_behavior_and_keeps_it_out_of_the_text(tokenizer):
    s = served(tokenizer)
    reply = ReplyText(s)
    first = reply.feed([s.behavior_ids["hold"], *_ids(tokenizer, "w1")], finished=False)
    rest = reply.feed([*_ids(tokenizer, "w2"), tokenizer.eos_token_id], finished=True)
    assert reply.behavior == "hold" and first + rest == "w1 w2" == reply.text
    plain = ReplyText(served(tokenizer, behaviors=False))
    assert plain.feed(_ids(tokenizer, "w1 w2"), finished=True) == "w1 w2" and plain.behavior is None


def test_stop_strings_are_held_back_until_they_cannot_match(tokenizer):
    reply = ReplyText(served(tokenizer), stops=["w3 w4"])
    sent = "".join(reply.feed(_ids(tokenizer, w), finished=False) for w in ("w1", "w2", "w3"))
    assert "w1 w2 w3".startswith(sent) and len(sent) <= len("w1 w2 w3") - len("w3 w4") + 1  # held back
    sent += reply.feed(_ids(tokenizer, "w4 w5"), finished=False)
    assert reply.stopped and sent == reply.text == "w1 w2 "  # cut before the stop string
    assert reply.feed(_ids(tokenizer, "w6"), finished=True) == ""
