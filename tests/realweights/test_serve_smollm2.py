"""The chat server on the real SmolLM2-135M-Instruct (``builtin:``, a model without behavior tokens), driven by
the official ``openai`` client: greedy replies equal ``bsft_jax.generate`` token for token (streamed or not),
no behavior field, and forcing a behavior is a 400 that says why."""

from __future__ import annotations

import openai
import pytest

from tests.serve.conftest import API_KEY, ThreadServer

MAX = 16
QUESTIONS = ["What is the capital of France?", "Name one symptom of dehydration."]


@pytest.fixture(scope="module")
def smol_server(smollm2_dir):
    server = ThreadServer(hf_path=smollm2_dir, max_batch_size=2, batch_wait_s=0.2)
    yield server
    server.stop()


def test_smollm2_greedy_replies_equal_generate_and_carry_no_behavior(smol_server):
    from openai import OpenAI

    from bsft_jax import generate

    served = smol_server.served
    client = OpenAI(base_url=smol_server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=600)
    assert "behaviors" not in client.models.list().data[0].model_extra
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        prompt = served.prompt_ids(messages)
        want = generate(served.model, [prompt], max_new_tokens=MAX, eos_ids=served.eos_ids)[0]
        reply = client.chat.completions.create(model=served.name, messages=messages, max_tokens=MAX, temperature=0,
                                               extra_body={"return_token_ids": True})
        choice = reply.choices[0]
        assert reply.prompt_token_ids == prompt and choice.token_ids == want
        text = served.tokenizer.decode([t for t in want if t not in served.eos_ids], skip_special_tokens=True)
        assert choice.message.content == text and len(text) > 10
        assert "behavior" not in choice.message.model_extra
        chunks = list(client.chat.completions.create(model=served.name, messages=messages, max_tokens=MAX,
                                                     temperature=0, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert "behavior" not in chunks[0].choices[0].delta.model_extra
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=served.name, messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"behavior": "intervene"})
    assert e.value.body["param"] == "behavior" and "no behavior tokens" in e.value.body["message"]
