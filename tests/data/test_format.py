"""Chat-template rendering: exact loss masks, train/eval prompt agreement, styles, truncation policy."""

import numpy as np
import pytest

from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.behavior.tokenizer import extend_tokenizer
from bsft_jax.data.format import STYLES, FewShotPool, Formatter, render_prompt, scene_text
from bsft_jax.data.reply import target_reply
from tests import assets


def _real_tokenizer(kind):
    from transformers import AutoTokenizer

    path = assets.qwen2_tokenizer_dir() if kind == "qwen2" else assets.llama3_tokenizer_dir()
    tok = AutoTokenizer.from_pretrained(path)
    extend_tokenizer(tok, BehaviorSpec())
    return tok


@pytest.fixture(scope="module", params=["demo", "qwen2", "llama3"])
def tokenizer(request, demo_tokenizer_path):
    if request.param == "demo":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(demo_tokenizer_path)
        extend_tokenizer(tok, BehaviorSpec())
        return tok
    return _real_tokenizer(request.param)


def _sample(records):
    """One record per category (13), multiple-choice and flag ones."""
    out = {}
    for r in records:
        out.setdefault(r.category, r)
    return list(out.values())


@pytest.mark.parametrize("style", STYLES)
def test_loss_mask_decodes_to_exactly_the_assistant_text(tokenizer, demo_records, style):
    spec = BehaviorSpec()
    fmt = Formatter(tokenizer, style=style, spec=spec, few_shot=FewShotPool(demo_records["train"]))
    for r in _sample(demo_records["test"]):
        ex = fmt.render_example(r)
        ids, mask = np.array(ex.input_ids), np.array(ex.loss_mask)
        # The mask is one contiguous block at the end: the reply and its end-of-turn token.
        assert mask.sum() == len(ids) - ex.num_prompt_tokens and mask[ex.num_prompt_tokens:].all()
        target = tokenizer.decode(ids[mask == 1].tolist(), skip_special_tokens=False)
        assert target == fmt.assistant_text(r) + fmt.end_text
        if style == "behavior_sft":
            assert ids[ex.num_prompt_tokens] == tokenizer.convert_tokens_to_ids(spec.token(r.behavior))
            assert target.startswith(spec.token(r.behavior) + target_reply(r))
        else:
            assert "<|behavior:" not in tokenizer.decode(ids.tolist(), skip_special_tokens=False)
        # The evaluator's prompt is exactly the training prompt, and it is what the template renders.
        prompt = fmt.render_prompt(r)
        assert prompt == list(ex.input_ids[:ex.num_prompt_tokens])
        want = tokenizer.apply_chat_template(fmt.messages(r), tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(prompt, skip_special_tokens=False) == want
        assert scene_text(r) in want
    assert fmt.stats.truncated == 0 and fmt.stats.dropped == 0


def test_end_of_turn_tokens_of_real_templates(demo_records):
    assert Formatter(_real_tokenizer("qwen2")).end_text == "<|im_end|>"
    llama = Formatter(_real_tokenizer("llama3"))
    assert llama.end_text == "<|eot_id|>"
    ids = llama.render_prompt(demo_records["test"][0])
    assert llama.tokenizer.convert_ids_to_tokens(ids[:1]) == ["<|begin_of_text|>"]  # one BOS, from the template


def test_styles_differ_as_documented(demo_tok, demo_records):
    spec = BehaviorSpec()
    r = next(x for x in demo_records["test"] if x.category == "Medication Safety Check")
    pool = FewShotPool(demo_records["train"], k=3, seed=0)
    explicit = Formatter(demo_tok, style="explicit_instruction", spec=spec).messages(r)
    assert explicit[0]["role"] == "system" and all(n in explicit[0]["content"] for n in spec.names)
    shots = pool.examples_for(r)
    assert len(shots) == 3 and all(s.category == r.category and s.case_id != r.case_id for s in shots)
    assert shots == FewShotPool(demo_records["train"], k=3, seed=0).examples_for(r)  # deterministic
    few = Formatter(demo_tok, style="few_shot", few_shot=pool).messages(r)
    assert [m["role"] for m in few] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert few[2]["content"] == target_reply(shots[0]) and few[-1]["content"] == scene_text(r)
    plain = Formatter(demo_tok, style="general_sft").messages(r)
    assert plain == [{"role": "user", "content": scene_text(r)}]
    with pytest.raises(ValueError, match="few_shot=FewShotPool"):
        Formatter(demo_tok, style="few_shot")
    with pytest.raises(ValueError, match="is not one of"):
        Formatter(demo_tok, style="chatty")


def test_behavior_sft_needs_the_behavior_tokens(demo_tokenizer_path):
    from transformers import AutoTokenizer

    with pytest.raises(ValueError, match="call extend_tokenizer first"):
        Formatter(AutoTokenizer.from_pretrained(demo_tokenizer_path), style="behavior_sft")


def test_overlong_examples_cut_context_from_the_left_never_the_target(demo_tok, demo_records):
    fmt = Formatter(demo_tok, style="explicit_instruction")
    r = demo_records["test"][0]
    full = fmt.render_example(r)
    head, body, tail = fmt._prompt_parts(r)
    target = full.input_ids[full.num_prompt_tokens:]
    budget = len(head) + len(tail) + len(target) + 5  # room for only 5 body tokens
    cut = fmt.render_example(r, max_len=budget)
    assert len(cut.input_ids) == budget and cut.tokens_cut == len(body) - 5
    assert cut.input_ids == tuple(head + body[-5:] + tail) + target  # system prompt kept, body cut on the left
    assert cut.loss_mask[-len(target):] == (1,) * len(target) and sum(cut.loss_mask) == len(target)
    # Smaller than head + tail: the head is cut too, the assistant header and target still intact.
    tiny = fmt.render_example(r, max_len=len(tail) + len(target) + 3)
    assert tiny.input_ids[-len(target) - len(tail):] == tuple(tail) + target
    # The target itself cannot fit: the example is dropped, counted, and nothing crashes.
    assert fmt.render_example(r, max_len=len(target)) is None
    assert (fmt.stats.truncated, fmt.stats.dropped, fmt.stats.examples) == (2, 1, 4)
    # Prompts for evaluation follow the same policy.
    assert render_prompt(r, demo_tok, style="explicit_instruction", max_len=len(head) + len(tail) + 5) == \
        head + body[-5:] + tail
