"""The toy learning test (issue 25): a tiny from-scratch decoder learns one demo category's decision.

Medication Safety Check alone: a scene should be flagged when the proposed drug's class is printed a
second time, as a charted allergy or on the card's alert line (bsft_jax.data.demo_scenes). A 2-layer,
d=64 model (~250k parameters, the demo BPE tokenizer) is trained with the recipe knobs, batches balanced
by decision (``data.balance="decision"``) and the behavior token's loss weighted
(``train.first_token_loss_weight``), then scored on the demo's own 80 held-out **test** scenes of the
category (40 intervene, 40 hold; drug x allergy combinations never seen in training) by the trainer's
steering evaluation: ``steer/decision_accuracy``, intervene vs hold read from the generated reply.

The 400 training scenes the demo set holds per category are too few: the model memorises them
(decision accuracy ~94% on its training batches, test at chance). So the training split is the demo
generator's train split drawn 10x larger (52,000 scenes, ~4,000 of this category); the test split is
the demo's, unchanged. The model first sits at ln 2 on the decision for 1,000-2,000 steps and then
learns the relation abruptly (docs/evaluation.md, "The toy learning test", has the measured curves).

With the knobs this run scores 95% (measured); with them removed (plain shuffled batches, weight 1.0)
the same run scores 66%, under the 80% the test asks for. Knobs off is above chance too: it learns
later, not never. :func:`test_toy_model_learns_the_decision_with_the_recipe_knobs` says what that means.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax

from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.data.demo import DemoConfig, generate_split
from bsft_jax.data.schema import write_jsonl
from bsft_jax.setup.config import load_config_file
from tests.toy import ROOT

log = logging.getLogger(__name__)

CATEGORY = "Medication Safety Check"
TRAIN_POOL = 52_000  # demo train scenes drawn (all 13 categories): ~4,000 of CATEGORY
STEPS = 2500
CHANCE = 0.5
PASS = 0.8  # 80 test scenes: 80% is 5.4 standard errors above chance; knobs on 95%, off 66% (measured)


def _category_data(folder: str) -> str:
    """``folder`` with train.jsonl (the larger train draw) and test.jsonl (the demo's) of CATEGORY alone."""
    spec = BehaviorSpec.item_scheme()
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", TRAIN_POOL), ("test", DemoConfig().num_test)):
        records = [r for r in generate_split(split, n, spec=spec) if r.category == CATEGORY]
        write_jsonl(records, os.path.join(folder, f"{split}.jsonl"))
    return folder


def toy_learning_config(run_dir: str, data_dir: str, *, knobs: bool):
    """The toy: configs/demo_scratch.py at 2 layers, d=64, on one category, with or without the knobs."""
    c = load_config_file(os.path.join(ROOT, "configs", "demo_scratch.py"), "demo_scratch.py")
    c.run_dir = run_dir
    c.model.arch.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
                        head_dim=16)
    c.model.scan_unroll = 1
    c.data.update(source="jsonl", path=data_dir, eval_split="test", eval_batches=-1,
                  seq_len=208)  # two scenes (<= 102 tokens each) per row: one balanced pair
    c.data.balance = "decision" if knobs else ""
    c.train.first_token_loss_weight = 50.0 if knobs else 1.0
    c.train.update(steps=STEPS, global_batch_size=4, log_every=250, eval_every=0, loss_budget=0.25,
                   steer_eval_items=80, steer_eval_split="test", steer_max_new_tokens=4)
    c.optimizer.update(learning_rate=3e-3, warmup_steps=20, min_lr_ratio=1.0, weight_decay=0.01)
    c.checkpoint.update(every_steps=10**6, keep=1, async_save=False)  # the final save only
    c.logging.tensorboard = False
    return c


def _train(tmp_path, data_dir: str, knobs: bool) -> tuple[float, float]:
    """(intervene-vs-hold accuracy on the test scenes after STEPS steps, seconds) of one toy run."""
    from bsft_jax.train.loop import run

    run_dir = str(tmp_path / ("knobs_on" if knobs else "knobs_off"))
    start = time.perf_counter()
    result = run(toy_learning_config(run_dir, data_dir, knobs=knobs), devices=jax.devices()[:1])
    seconds = time.perf_counter() - start
    assert result.final_step == STEPS
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        final = [r for r in map(json.loads, f) if r["split"] == "eval"][-1]
    assert final["step"] == STEPS and final["steer/unparsed"] == 0.0, final
    return final["steer/decision_accuracy"], seconds



def test_toy_model_learns_the_decision_with_the_recipe_knobs(tmp_path):
    """With the knobs: at least 80% intervene-vs-hold on the held-out test scenes after STEPS steps.

    What removing the knobs does, measured once (seed 0, docs/evaluation.md "The toy learning test"):
    this run without them scores 66.2% at step 2,500 against 95.0% with them, so this test fails without
    the knobs. The margin is one seed's, and knobs off is not at chance: the decision is learned
    abruptly after a plateau, the knobs bring that rise earlier, and without them it comes later (in
    runs of 8 rows a step, 72.5% vs 76.2% at step 1,250). On one category the balance knob does little
    (its scenes are half intervene, half hold); the weight is what moves the decision. Knobs off is not
    trained here: it would double the test's time for a number no assertion could rest on
    (``toy_learning_config(..., knobs=False)`` reproduces it).
    """
    data_dir = _category_data(str(tmp_path / "data"))
    accuracy, seconds = _train(tmp_path, data_dir, knobs=True)
    with open(tmp_path / "knobs_on" / "config.json") as f:  # the run really had the knobs on
        config = json.load(f)
    assert config["data"]["balance"] == "decision" and config["train"]["first_token_loss_weight"] == 50.0
    report = (f"{CATEGORY}, {STEPS} steps of 4 rows: intervene-vs-hold accuracy {accuracy:.1%} on the 80 test "
              f"scenes (chance {CHANCE:.0%}), {seconds:.0f} s")
    log.info(report)
    assert accuracy >= PASS, report
