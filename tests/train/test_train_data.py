"""The trainer's warning when its training stream cuts scenes to fit a row (bsft_jax.train.data.truncation_warning).

Issue 25: focused Critical Value runs at ``data.seq_len=256`` with balanced pairs cut every scene (~190
tokens) to half a row, chart and lab values included; nothing said so, and the runs were read as "the
model cannot compare numbers". A cut scene now warns once per new count, naming the per-scene budget.
"""

from __future__ import annotations

import jax

from bsft_jax.data.format import FormatStats
from bsft_jax.setup.settings import DataSettings
from bsft_jax.train.data import truncation_warning
from bsft_jax.train.loop import run
from tests.toy import toy_demo_config


def _data(seq_len: int, balance: str) -> DataSettings:
    return DataSettings(source="demo", path="", field_map={}, style="behavior_sft", seq_len=seq_len, packing=True,
                        shuffle_seed=0, train_split="train", eval_split="validation", eval_batches=1,
                        demo={"num_train": 8, "num_validation": 4, "num_test": 4, "seed": 0, "tokenizer_vocab": 512},
                        synthetic_vocab=64, balance=balance)


def test_no_warning_without_new_cuts():
    assert truncation_warning(None, _data(512, ""), 0) is None
    assert truncation_warning(FormatStats(examples=9), _data(512, ""), 0) is None
    assert truncation_warning(FormatStats(examples=9, truncated=3), _data(512, ""), 3) is None  # already warned
    assert truncation_warning(FormatStats(examples=9, truncated=5), _data(512, ""), 3) is None  # not yet doubled
    assert truncation_warning(FormatStats(examples=9, truncated=6), _data(512, ""), 3) is not None


def test_the_warning_names_the_budget_per_scene_of_a_balanced_pair():
    stats = FormatStats(examples=12, truncated=7, dropped=1)
    pair = truncation_warning(stats, _data(256, "decision"), 0)
    assert pair.startswith("training data: 7 of 12 scenes") and "fit 128 tokens (data.seq_len=256, half a row" in pair
    assert "1 dropped" in pair and "raise data.seq_len" in pair
    single = truncation_warning(stats, _data(256, ""), 3)
    assert "fit 256 tokens (data.seq_len=256)" in single and "half a row" not in single



def test_a_run_whose_rows_cut_its_scenes_says_so(tmp_path, monkeypatch, caplog, toy_cache):
    """The training loop logs the warning: the toy demo run with rows too short for a balanced pair."""
    monkeypatch.setenv("BSFT_JAX_CACHE", toy_cache)
    c = toy_demo_config(str(tmp_path / "run"), steps=2)
    c.data.update(seq_len=64, balance="decision")
    c.train.update(eval_every=-1, log_every=1)
    caplog.set_level("INFO")
    run(c, devices=jax.devices()[:1])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "training data:" in r.message]
    assert warnings and "fit 32 tokens (data.seq_len=64, half a row per scene of a balanced pair)" in warnings[0]
