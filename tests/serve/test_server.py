"""The server end to end with the official ``openai`` client, on a tiny trained BehaviorSFT run: routes, the
key, greedy replies equal to ``bsft_jax.generate`` token for token (streamed or not), the chosen
behavior reported and kept out of the text, forcing as the evaluator forces, stop strings, seeds."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from bsft_jax.evaluate.core import split_reply
from bsft_jax.evaluate.metrics import UNPARSED

MAX = 12  # one token-budget bucket (16) for every request here: few compilations


def _expected(reference, tokens):
    """(behavior, text) the evaluator reads off generated ids (no behavior token: None)."""
    behavior, body = split_reply(tokens, reference.behavior_ids, reference.eos_ids)
    return (None if behavior == UNPARSED else behavior), reference.tokenizer.decode(body, skip_special_tokens=True)


def test_models_health_and_the_api_key(server, client):
    models = client.models.list().data
    assert [m.id for m in models] == ["bsft"]
    assert models[0].behaviors == ["answer", "hold", "intervene"]
    assert server.health()["status"] == "ok"  # open without the key
    from openai import OpenAI

    for key in ("wrong-key", ""):
        bad = OpenAI(base_url=server.url + "/v1", api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    request = urllib.request.Request(server.url + "/v1/models")  # no Authorization header at all
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=30)
    assert e.value.code == 401 and json.loads(e.value.read())["error"]["code"] == "invalid_api_key"


def test_greedy_reply_equals_bsft_jax_generate_and_reports_the_chosen_behavior(client, reference):
    chosen = []
    for messages in reference.scenes[:3]:
        want = reference.generate(messages, MAX)
        reply = client.chat.completions.create(model="bsft", messages=messages, max_tokens=MAX, temperature=0,
                                               extra_body={"return_token_ids": True})
        choice = reply.choices[0]
        assert reply.prompt_token_ids == reference.prompt(messages)  # the tokenizer's own chat template
        assert choice.token_ids == want  # token for token
        behavior, text = _expected(reference, want)
        assert choice.message.behavior == behavior and choice.message.content == text
        assert not any(f"<|behavior:{b}|>" in text for b in reference.behavior_ids)
        assert choice.finish_reason == ("stop" if want[-1] in reference.eos_ids else "length")
        assert reply.usage.completion_tokens == len(want)
        assert reply.usage.prompt_tokens == len(reply.prompt_token_ids)
        chosen.append(behavior)
    assert any(b is not None for b in chosen), chosen  # the run does choose behaviors (not only forced ones)


def test_streamed_reply_equals_the_whole_reply(client, reference):
    messages = reference.scenes[0]
    whole = client.chat.completions.create(model="bsft", messages=messages, max_tokens=MAX, temperature=0)
    stream = client.chat.completions.create(model="bsft", messages=messages, max_tokens=MAX, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.behavior == whole.choices[0].message.behavior
    assert all(not hasattr(c.choices[0].delta, "behavior") for c in chunks[1:] if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_forcing_a_behavior_is_the_evaluators_forcing(client, reference, stream):
    messages = reference.scenes[1]
    replies = {}
    for name in ("hold", "intervene"):
        token = reference.behavior_ids[name]
        want = reference.generate(messages, MAX, force=token)  # the evaluator's --force_behavior
        kwargs = dict(model="bsft", messages=messages, max_tokens=MAX, temperature=0,
                      extra_body={"behavior": name, "return_token_ids": True})
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **kwargs))
            behavior = chunks[0].choices[0].delta.behavior
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            ids = next(c.choices[0].token_ids for c in chunks if c.choices and c.choices[0].finish_reason)
        else:
            choice = client.chat.completions.create(**kwargs).choices[0]
            behavior, text, ids = choice.message.behavior, choice.message.content, choice.token_ids
        assert behavior == name and ids[0] == token and ids == want
        assert text == _expected(reference, want)[1]
        replies[name] = ids[1:]
    assert replies["hold"] != replies["intervene"]  # the forced token steers what follows


def test_stop_strings_cut_the_reply(client, reference):
    messages = reference.scenes[2]
    free = client.chat.completions.create(model="bsft", messages=messages, max_tokens=MAX, temperature=0,
                                          extra_body={"behavior": "answer"}).choices[0].message.content
    assert len(free) >= 4, free
    stop = free[2:4]
    cut = free[: free.find(stop)]
    for stream in (False, True):
        reply = client.chat.completions.create(model="bsft", messages=messages, max_tokens=MAX, temperature=0,
                                               stop=[stop, "never-seen-stop"], stream=stream,
                                               extra_body={"behavior": "answer"})
        if stream:
            chunks = list(reply)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            text, finish = reply.choices[0].message.content, [reply.choices[0].finish_reason]
        assert text == cut and finish == ["stop"]


def test_seeded_sampling_repeats_and_top_p_is_accepted(client, reference):
    kwargs = dict(model="bsft", messages=reference.scenes[0], max_tokens=MAX, temperature=1.0, top_p=0.9)

    def sample(seed):
        return client.chat.completions.create(seed=seed, extra_body={"return_token_ids": True},
                                              **kwargs).choices[0].token_ids

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9))
