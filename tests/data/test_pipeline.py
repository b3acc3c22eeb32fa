"""Grain pipeline: batch contract, packing keeps every token, process shards, exact resume via Orbax."""

import collections

import grain
import numpy as np
import pytest

from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.data.format import Formatter
from bsft_jax.data.pipeline import BATCH_KEYS, global_batch, make_train_iterator

SEQ = 256


def _segments(batches):
    """Every packed example as a (tokens, targets, loss_mask) tuple, checking the row layout."""
    out = []
    for b in batches:
        assert set(b) == set(BATCH_KEYS)
        for k in BATCH_KEYS:
            assert b[k].dtype == np.int32 and b[k].shape == b["tokens"].shape
        for row in range(b["tokens"].shape[0]):
            seg, pos = b["segment_ids"][row], b["positions"][row]
            pad = seg == 0
            assert not b["loss_mask"][row][pad].any() and not b["tokens"][row][pad].any()
            ids = [s for s in np.unique(seg) if s]
            assert ids == list(range(1, len(ids) + 1))  # segments 1..n
            if pad.any():  # padding only at the end of the row
                assert not seg[np.argmax(pad):].any()
            for s in ids:
                where = np.flatnonzero(seg == s)
                assert (np.diff(where) == 1).all() and (pos[where] == np.arange(len(where))).all()
                out.append(tuple(tuple(b[k][row][where].tolist()) for k in ("tokens", "targets", "loss_mask")))
    return out


def _expected(records, tok):
    fmt = Formatter(tok, style="behavior_sft", spec=BehaviorSpec())
    out = []
    for r in records:
        ex = fmt.render_example(r)
        out.append((ex.input_ids[:-1], ex.input_ids[1:], ex.loss_mask[1:]))
    return out


@pytest.mark.parametrize("packing", [True, False])
def test_one_epoch_keeps_every_token_exactly_once(demo_tok, demo_records, packing):
    records = demo_records["train"]
    it = make_train_iterator(records, demo_tok, seq_len=SEQ, batch_size=4, seed=0, packing=packing, num_epochs=1)
    batches = list(it)
    assert all(b["tokens"].shape == (4, SEQ) for b in batches)
    got = _segments(batches)
    assert collections.Counter(got) == collections.Counter(_expected(records, demo_tok))
    if packing:  # several examples per row, so fewer rows than examples
        # demo 2.1.0 (a card in every scene): about 1.7 examples per 256-token row
        assert sum(b["tokens"].shape[0] for b in batches) < 0.65 * len(records)
    else:
        assert all((b["segment_ids"] <= 1).all() for b in batches)
    # Targets are the next tokens and the loss covers exactly the assistant reply (+ end token).
    b = batches[0]
    seg = b["segment_ids"][0]
    first = np.flatnonzero(seg == 1)
    assert (b["targets"][0][first[:-1]] == b["tokens"][0][first[1:]]).all()
    assert it.stats.examples == len(records) and it.stats.truncated == it.stats.dropped == 0


def test_two_processes_get_disjoint_shards_whose_union_is_the_epoch(demo_tok, demo_records):
    records = demo_records["train"]
    kw = dict(seq_len=SEQ, batch_size=2, seed=5, num_epochs=1)
    shards = [_segments(list(make_train_iterator(records, demo_tok, process_index=p, process_count=2, **kw)))
              for p in range(2)]
    c0, c1 = collections.Counter(shards[0]), collections.Counter(shards[1])
    assert not set(c0) & set(c1)
    assert c0 + c1 == collections.Counter(_expected(records, demo_tok))
    assert abs(len(shards[0]) - len(shards[1])) <= 1
    # The global batch of a 2-process run is the two process batches stacked.
    its = [make_train_iterator(records, demo_tok, process_index=p, process_count=2, **kw) for p in range(2)]
    g = global_batch(its)
    assert g["tokens"].shape == (4, SEQ)


def test_shuffle_is_seeded_and_reshuffles_each_epoch(demo_tok, demo_records):
    records = demo_records["train"][:60]

    def order(seed, epochs=2):
        it = make_train_iterator(records, demo_tok, seq_len=SEQ, batch_size=2, seed=seed, packing=False,
                                 num_epochs=epochs)
        return [s[0] for s in _segments(list(it))]

    a = order(0)
    assert a == order(0) and a != order(1)
    assert len(a) == 120 and a[:60] != a[60:] and sorted(a[:60]) == sorted(a[60:])


def test_truncation_is_counted_and_never_crashes(demo_tok, demo_records):
    records = demo_records["train"][:40]
    it = make_train_iterator(records, demo_tok, seq_len=48, batch_size=2, seed=0, num_epochs=1)
    segs = _segments(list(it))
    assert it.stats.truncated + it.stats.dropped > 0 and it.stats.examples == 40
    assert len(segs) == 40 - it.stats.dropped and all(len(s[0]) <= 48 for s in segs)
    assert all(s[2][-1] == 1 for s in segs)  # every kept example still ends with its (uncut) target



def test_balanced_pairs_too_long_for_a_row_are_cut_to_half_a_row_each_and_counted(demo_tok, demo_records):
    """A pair longer than the row is re-rendered with half a row per scene, and the cut is counted (the trainer
    warns from these counts: bsft_jax.train.data.truncation_warning, tests/train/test_train_data.py)."""
    records = [r for r in demo_records["train"] if not r.is_multiple_choice][:24]
    it = make_train_iterator(records, demo_tok, seq_len=96, batch_size=2, seed=0, num_epochs=1, balance="decision")
    segs = _segments(list(it))
    assert it.stats.truncated > 0 and segs and all(len(s[0]) <= 48 for s in segs)

def test_orbax_save_restore_gives_the_identical_next_batch(tmp_path, demo_tok, demo_records):
    import orbax.checkpoint as ocp

    kw = dict(seq_len=SEQ, batch_size=3, seed=11, process_index=1, process_count=2)
    it = make_train_iterator(demo_records["train"], demo_tok, **kw)  # infinite: crosses epoch boundaries
    for _ in range(30):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(30, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = [next(it) for _ in range(5)]

    fresh = make_train_iterator(demo_records["train"], demo_tok, **kw)
    first = next(fresh)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(30, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    for want in expected:
        got = next(fresh)
        assert all(np.array_equal(got[k], want[k]) for k in BATCH_KEYS)
    assert not np.array_equal(first["tokens"], expected[0]["tokens"])  # the restore did move the iterator


def test_get_set_state_round_trip(demo_tok, demo_records):
    kw = dict(seq_len=SEQ, batch_size=2, seed=3)
    it = make_train_iterator(demo_records["train"], demo_tok, **kw)
    for _ in range(7):
        next(it)
    state = it.get_state()
    want = next(it)
    other = make_train_iterator(demo_records["train"], demo_tok, **kw)
    other.set_state(state)
    got = next(other)
    assert all(np.array_equal(got[k], want[k]) for k in BATCH_KEYS)


def test_bad_arguments_are_named(demo_tok, demo_records):
    with pytest.raises(ValueError, match="process_index=2"):
        make_train_iterator(demo_records["train"], demo_tok, seq_len=SEQ, batch_size=2, process_index=2,
                            process_count=2)
    with pytest.raises(ValueError, match="seq_len"):
        make_train_iterator(demo_records["train"], demo_tok, seq_len=1, batch_size=2)
