"""Evaluator core on hand-made records with a scripted generator (no model): behavior tokens and
labels are read from the replies, unparseable replies count as wrong, both scoring modes, reports."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from bsft_jax.decode.sampler import SamplerOutput
from bsft_jax.evaluate.core import evaluate_records, split_reply, write_comparison
from bsft_jax.evaluate.metrics import UNPARSED, compute_metrics
from tests.evaluate.test_metrics import DDX, ROWS, TO, _items

BEHAVIOR_IDS = {"reactive": 1000, "balanced": 1001, "proactive": 1002}
EOS = 999


@dataclasses.dataclass(frozen=True)
class Rec:
    id: str
    category: str
    label: str
    behavior: str
    options: tuple[tuple[str, str], ...] | None

    @property
    def is_multiple_choice(self) -> bool:
        return self.options is not None


RECORDS = [Rec(i, c, g, gb, (("A", "a"), ("B", "b"), ("C", "c")) if c in (DDX, TO) else None)
           for i, c, g, _, gb, _ in ROWS]


def encode(text: str) -> list[int]:
    return [ord(ch) for ch in text]


def detokenize(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def parse_label(text: str, record: Rec) -> str | None:
    line = text.splitlines()[0] if text else ""
    if record.is_multiple_choice:
        m = re.fullmatch(r"Answer: ([A-Z])", line)
        return m.group(1) if m and m.group(1) in dict(record.options) else None
    if line == "No concerns":
        return "none"
    m = re.fullmatch(r"Flag: (\w+)", line)
    return m.group(1) if m else None


def scripted_reply(row) -> list[int]:
    """The reply a model 'gave' for a ROWS entry: behavior token (unless unparsed), label line, EOS."""
    _, category, _, pred, _, pred_behavior = row
    head = [] if pred_behavior == UNPARSED else [BEHAVIOR_IDS[pred_behavior]]
    if pred is None:
        text = "I am not sure what to say."
    elif category in (DDX, TO):
        text = f"Answer: {pred}\nBecause."
    else:
        text = "No concerns" if pred == "none" else f"Flag: {pred}"
    return head + encode(text) + [EOS]


REPLIES = {row[0]: scripted_reply(row) for row in ROWS}


def fake_generate(prompts, force_first_token=None):
    """Looks the record up from its prompt ("<id>:" + ...) and returns the scripted reply."""
    tokens = []
    for p in prompts:
        reply = list(REPLIES[detokenize(p).split(":")[0]])
        if force_first_token is not None:
            reply = [force_first_token] + [t for t in reply if t not in BEHAVIOR_IDS.values()]
        tokens.append(reply)
    return SamplerOutput(tokens=tokens, logprobs=[[0.0] * len(t) for t in tokens], logits=None,
                         num_generated=sum(map(len, tokens)), seconds=0.5)


def fake_generate_plain(prompts, force_first_token=None):
    """A model without behavior tokens (baselines): the same replies, no leading token."""
    out = fake_generate(prompts, force_first_token)
    out.tokens = [[t for t in reply if t not in BEHAVIOR_IDS.values()] for reply in out.tokens]
    return out


def prompt_ids(record: Rec) -> list[int]:
    return encode(f"{record.id}: scene of {record.category}\nassistant:")


KW = dict(prompt_ids=prompt_ids, generate=fake_generate, detokenize=detokenize, parse_label=parse_label, eos_ids=[EOS])


def test_split_reply():
    assert split_reply([1002, 65, EOS], BEHAVIOR_IDS, [EOS]) == ("proactive", [65])
    assert split_reply([65, 66], BEHAVIOR_IDS, [EOS]) == (UNPARSED, [65, 66])
    assert split_reply([1002, 65], None, [EOS]) == (None, [1002, 65])


def test_generate_mode_reproduces_hand_numbers(tmp_path):
    result = evaluate_records(RECORDS, name="BehaviorSFT", behavior_token_ids=BEHAVIOR_IDS, **KW)
    # The replies encode exactly the predictions of tests/test_metrics.py, whose numbers are by hand.
    expected = compute_metrics(_items())
    assert {k: v for k, v in result.metrics.items() if k != "unparsed_examples"} == {
        k: v for k, v in expected.items() if k != "unparsed_examples"}
    assert result.metrics["unparsed_examples"] == [{"id": "e5", "reply": "I am not sure what to say."},
                                                   {"id": "d4", "reply": "I am not sure what to say."}]
    assert result.metrics["overall_f1"] == pytest.approx((5 / 9 + 0.5 + 1.0 + 0.5) / 4)
    assert result.metrics["num_unparsed"] == 2 and result.metrics["behavior"]["accuracy"] == pytest.approx(0.75)
    assert result.info["decode tokens/s"] == pytest.approx(result.info["generated tokens"] / 0.5, rel=1e-3)
    # A baseline without behavior tokens: the same labels, behavior n/a.
    baseline = evaluate_records(RECORDS, name="GeneralSFT", **{**KW, "generate": fake_generate_plain})
    assert baseline.metrics["behavior"] is None
    assert baseline.metrics["per_category"] == compute_metrics(_items(with_behavior=False))["per_category"]
    paths = write_comparison([baseline, result], tmp_path)
    md = open(paths["markdown"]).read()
    assert "| Category | Group | n | GeneralSFT | BehaviorSFT |" in md and "| decode tokens/s |" in md
    rows = [json.loads(line) for line in open(paths["predictions:BehaviorSFT"])]
    assert [r["id"] for r in rows] == [r.id for r in RECORDS]
    assert rows[4]["pred_label"] is None and rows[4]["pred_behavior"] == UNPARSED


def test_loglik_mode_ranks_options_after_the_behavior_token():
    seen_prefixes = []

    def score(prefixes, continuations):
        seen_prefixes.extend(prefixes)
        out = []
        for prefix, cont in zip(prefixes, continuations):
            record = next(r for r in RECORDS if detokenize(prefix).startswith(r.id + ":"))
            out.append(1.0 if detokenize(cont) == f"Answer: {record.label}" else -1.0)
        return out

    result = evaluate_records(RECORDS, name="ll", behavior_token_ids=BEHAVIOR_IDS, mode="loglik",
                              score_continuations=score, candidate_ids=lambda r, k: encode(f"Answer: {k}"), **KW)
    per = result.metrics["per_category"]
    assert per[DDX]["f1"] == 1.0 and per[DDX]["unparsed"] == 0  # d4 was unparseable, now ranked
    assert per["Error Correction"]["f1"] == pytest.approx(5 / 9)  # open items are still parsed
    assert len(seen_prefixes) == 3 * 6  # 6 multiple-choice records x 3 options
    d3 = [*prompt_ids(RECORDS[8]), BEHAVIOR_IDS["proactive"]]  # the behavior the model chose for d3
    assert d3 in seen_prefixes
    # with candidates for the open (flag) items too, every item is ranked: nothing is unparsed
    space = {c: sorted({r.label for r in RECORDS if r.category == c}) for c in {r.category for r in RECORDS}}
    ranked = evaluate_records(RECORDS, name="ll2", behavior_token_ids=BEHAVIOR_IDS, mode="loglik",
                              score_continuations=lambda p, c: [
                                  1.0 if detokenize(ci) in (f"Answer: {r.label}", f"Flag: {r.label}") else -1.0
                                  for pi, ci in zip(p, c)
                                  for r in [next(r for r in RECORDS if detokenize(pi).startswith(r.id + ":"))]],
                              candidate_ids=lambda r, k: encode(f"Answer: {k}" if r.options else f"Flag: {k}"),
                              candidates=lambda r: [k for k, _ in r.options] if r.options else space[r.category],
                              **KW)
    assert ranked.metrics["num_unparsed"] == 0 and ranked.metrics["overall_f1"] == 1.0
    with pytest.raises(ValueError, match="loglik"):
        evaluate_records(RECORDS, name="x", mode="loglik", **KW)


def test_forced_behavior():
    result = evaluate_records(RECORDS, name="forced", behavior_token_ids=BEHAVIOR_IDS, force_behavior="reactive", **KW)
    assert {i.pred_behavior for i in result.items} == {"reactive"}
    assert result.info["forced behavior"] == "reactive"
    assert result.metrics["behavior"]["accuracy"] == pytest.approx(6 / 16)  # the 6 reactive items
    with pytest.raises(ValueError, match="cannot force"):
        evaluate_records(RECORDS, name="x", force_behavior="reactive", **KW)


# ----------------------------------------------------------------------------- with a real tokenizer and model
@pytest.fixture(scope="module")
def demo_setup(tmp_path_factory):
    """The demo tokenizer (extended with behavior tokens), a small test split and a random tiny model."""
    from bsft_jax.behavior.spec import BehaviorSpec
    from bsft_jax.behavior.surgery import add_behavior_tokens
    from bsft_jax.data import DemoConfig, load_demo, load_demo_tokenizer
    from bsft_jax.models.config import DecoderConfig
    from bsft_jax.models.decoder import init_decoder

    cache = str(tmp_path_factory.mktemp("demo"))
    small = DemoConfig(num_train=130, num_validation=13, num_test=26, seed=5)
    splits = load_demo(config=small, cache_dir=cache)
    tokenizer = load_demo_tokenizer(config=small, cache_dir=cache, vocab_size=512)
    rows = -(-len(tokenizer) // 128) * 128
    config = DecoderConfig(model_type="qwen2", vocab_size=rows, valid_vocab_size=len(tokenizer), hidden_size=64,
                           intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                           qkv_bias=True, tie_word_embeddings=True, max_position_embeddings=1024,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = init_decoder(config, seed=0)
    spec = BehaviorSpec()
    model, config, ids = add_behavior_tokens(model, config, tokenizer, spec)
    return splits, tokenizer, model, ids


def test_evaluate_model_wiring(demo_setup):
    from bsft_jax.data import FewShotPool, Formatter
    from bsft_jax.evaluate.core import evaluate_model

    splits, tokenizer, model, ids = demo_setup
    test = splits["test"]
    forced = evaluate_model(model, tokenizer, test, name="BehaviorSFT", style="behavior_sft", max_new_tokens=6,
                            force_behavior="proactive")
    assert {i.pred_behavior for i in forced.items} == {"proactive"}
    assert forced.metrics["num_items"] == len(test) and forced.info["decode tokens/s"] > 0
    # every reply the random model wrote is scored exactly as the data layer's parser reads it
    from bsft_jax.data import parse_label

    assert [i.pred_label for i in forced.items] == [parse_label(i.reply, r) for i, r in zip(forced.items, test)]
    from bsft_jax.data import label_space

    space = label_space(splits["train"])
    ll = evaluate_model(model, tokenizer, test, name="ll", style="behavior_sft", max_new_tokens=4, mode="loglik",
                        label_space=space)
    for item, record in zip(ll.items, test):  # ranked: never unparsed
        assert item.pred_label in (dict(record.options) if record.is_multiple_choice else space[record.category])
    few = evaluate_model(model, tokenizer, test[:4], name="few-shot", style="few_shot", max_new_tokens=4,
                         few_shot=FewShotPool(splits["train"], k=3))
    assert few.metrics["behavior"] is None and few.info["style"] == "few_shot"
    # prompts are the formatter's, ending at the assistant header (no behavior token)
    prompt = Formatter(tokenizer, style="behavior_sft").render_prompt(test[0])
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n") and ids["proactive"] not in prompt
