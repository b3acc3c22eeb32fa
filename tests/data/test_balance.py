"""Batches balanced by behavior (data.balance="decision"): pairs, exact balance per batch, bitwise resume."""

import collections
import dataclasses

import grain
import numpy as np
import pytest
from transformers import AutoTokenizer

from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.behavior.tokenizer import extend_tokenizer
from bsft_jax.data.balance import BalancedUnits, decision_of, merge_segments
from bsft_jax.data.format import Formatter
from bsft_jax.data.pipeline import BATCH_KEYS, make_train_iterator
from bsft_jax.train.loss import first_target_mask

SEQ = 512
SPEC = BehaviorSpec.item_scheme()


@pytest.fixture()
def item_tok(demo_tokenizer_path):
    tok = AutoTokenizer.from_pretrained(demo_tokenizer_path)
    extend_tokenizer(tok, SPEC)
    return tok


@pytest.fixture(scope="module")
def item_records(demo_records):
    """The demo records with the item-level behavior (answer / intervene / hold)."""
    return {split: [dataclasses.replace(r, behavior=SPEC.behavior_for_item(r.category, r.label, r.is_multiple_choice))
                    for r in records] for split, records in demo_records.items()}


def test_units_pair_every_open_scene_each_epoch():
    decisions = ["intervene"] * 7 + ["hold"] * 5 + ["none"] * 4
    units = BalancedUnits(decisions, seed=3)
    assert units.num_units == 7 + 4
    for e in range(3):
        epoch = units.epoch(e)
        pairs = [u for u in epoch if len(u) == 2]
        assert len(pairs) == 7
        assert all(sorted(decisions[i] for i in u) == ["hold", "intervene"] for u in pairs)
        assert sorted(i for u in pairs for i in u if decisions[i] == "intervene") == list(range(7))  # each once
        assert set(i for u in pairs for i in u if decisions[i] == "hold") == set(range(7, 12))  # all, some twice
        assert sorted(u[0] for u in epoch if len(u) == 1) == list(range(12, 16))
    assert units.epoch(0) != units.epoch(1)  # re-drawn every epoch
    assert BalancedUnits(decisions, seed=3).epoch(1) == units.epoch(1)  # a pure function of (seed, epoch)
    assert [units(k) for k in range(11, 22)] == units.epoch(1)


def test_one_sided_shard_has_no_pairs():
    units = BalancedUnits(["intervene", "intervene", "none"], seed=0)
    assert sorted(units.epoch(0)) == [(0,), (1,), (2,)]


def test_merge_segments_numbers_sub_segments_in_row_order():
    packed = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3, 0, 0])
    sub = np.array([1, 1, 2, 2, 1, 1, 1, 2, 2, 0, 0])
    assert merge_segments(packed, sub).tolist() == [1, 1, 2, 2, 3, 3, 4, 5, 5, 0, 0]


def _behavior_counts(batch, tok):
    """Intervene / hold / answer tokens at the first target of every segment of one batch."""
    first = np.asarray(first_target_mask(batch["loss_mask"], batch["segment_ids"]))
    names = {tok.convert_tokens_to_ids(SPEC.token(n)): n for n in SPEC.names}
    return collections.Counter(names.get(int(t), "?") for t in batch["targets"][first])


def test_every_batch_holds_as_many_intervene_as_hold_scenes(item_tok, item_records):
    records = item_records["train"]
    assert {decision_of(r) for r in records} == {"intervene", "hold", "none"}
    it = make_train_iterator(records, item_tok, spec=SPEC, seq_len=SEQ, batch_size=4, seed=0, balance="decision")
    plain = make_train_iterator(records, item_tok, spec=SPEC, seq_len=SEQ, batch_size=4, seed=0)
    imbalance_plain = []
    for _ in range(40):  # more than an epoch of units
        b = next(it)
        counts = _behavior_counts(b, item_tok)
        assert counts["?"] == 0
        assert counts["intervene"] == counts["hold"] > 0
        for row in range(4):  # segments 1..n, contiguous, positions restart at 0
            seg, pos = b["segment_ids"][row], b["positions"][row]
            for s in [s for s in np.unique(seg) if s]:
                where = np.flatnonzero(seg == s)
                assert (np.diff(where) == 1).all() and (pos[where] == np.arange(len(where))).all()
            ids = [s for s in np.unique(seg) if s]
            assert ids == list(range(1, len(ids) + 1))
        c = _behavior_counts(next(plain), item_tok)
        imbalance_plain.append(abs(c["intervene"] - c["hold"]))
    assert max(imbalance_plain) > 0  # without balancing, batches do drift (the test can tell)


def test_balanced_segments_are_the_formatted_examples(item_tok, item_records):
    records = item_records["train"]
    fmt = Formatter(item_tok, style="behavior_sft", spec=SPEC)
    expected = set()
    for r in records:
        ex = fmt.render_example(r)
        expected.add(tuple(ex.input_ids[:-1]))
    it = make_train_iterator(records, item_tok, spec=SPEC, seq_len=SEQ, batch_size=2, seed=1, balance="decision")
    for _ in range(10):
        b = next(it)
        for row in range(2):
            seg = b["segment_ids"][row]
            for s in [s for s in np.unique(seg) if s]:
                assert tuple(b["tokens"][row][seg == s].tolist()) in expected


def test_balanced_resume_is_bitwise_mid_epoch(tmp_path, item_tok, item_records):
    import orbax.checkpoint as ocp

    kw = dict(spec=SPEC, seq_len=SEQ, batch_size=3, seed=11, process_index=1, process_count=2, balance="decision")
    it = make_train_iterator(item_records["train"], item_tok, **kw)
    for _ in range(23):  # the shard's units span ~20 batches: this crosses an epoch boundary
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(23, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = [next(it) for _ in range(5)]
    fresh = make_train_iterator(item_records["train"], item_tok, **kw)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(23, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    for want in expected:
        got = next(fresh)
        assert all(np.array_equal(got[k], want[k]) for k in BATCH_KEYS)


def test_balance_needs_packing_and_a_known_mode(item_tok, item_records):
    with pytest.raises(ValueError, match="balance must be one of"):
        make_train_iterator(item_records["train"], item_tok, spec=SPEC, seq_len=SEQ, batch_size=2, balance="x")
    with pytest.raises(ValueError, match="needs packing"):
        make_train_iterator(item_records["train"], item_tok, spec=SPEC, seq_len=SEQ, batch_size=2,
                            balance="decision", packing=False)


def test_settings_modes_match_the_pipeline():
    from bsft_jax.data.balance import BALANCE_MODES
    from bsft_jax.setup.settings import BALANCE_MODES as SETTINGS_MODES

    assert SETTINGS_MODES == BALANCE_MODES
