"""Grain input pipeline: records -> formatted, packed (or padded), sharded, checkpointable batches.

The trainer calls one function::

    it = make_train_iterator(records, tokenizer, spec=spec, style="behavior_sft", seq_len=512,
                             batch_size=per_process_batch, seed=0, process_index=jax.process_index(),
                             process_count=jax.process_count())
    batch = next(it)      # dict of int32 [batch_size, seq_len]: tokens, targets, loss_mask, segment_ids, positions
    state = it.get_state()  # JSON-able; it.set_state(state) resumes at the identical next batch

Orbax: ``ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it))`` on save and
``grain.checkpoint.CheckpointRestore(it)`` on restore (``it`` is a ``grain.DatasetIterator``).

Order of operations (all deterministic given ``seed``):
  1. shard: process p takes examples p, p + P, p + 2P, ... (static, disjoint, their union is the set);
  2. shuffle within the shard, reseeded every epoch; repeat ``num_epochs`` times (None: forever);
  3. format each record (:class:`bsft_jax.data.format.Formatter`) to ids + loss mask, shift by one
     (tokens = ids[:-1], targets = ids[1:], loss_mask = mask[1:]), cut the context from the left
     to fit ``seq_len`` (counted in ``it.stats``; examples whose target cannot fit are dropped);
  4. pack several examples per row with grain's first-fit packing (segment_ids 1..n, positions
     restarting at 0, 0 = padding), or pad one example per row (``packing=False``);
  5. batch to exactly ``[batch_size, seq_len]``; a finite run's last partial batch is padded with
     empty rows (segment_ids 0, loss_mask 0), so no token is lost and shapes never change.
With several processes, shards can differ by one example, so use ``num_epochs=None`` and stop by
step count (each process then yields batches forever, in lock step).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.data.balance import BALANCE_MODES, BalancedUnits, decision_of, merge_segments
from bsft_jax.data.format import FewShotPool, FormatStats, Formatter
from bsft_jax.data.schema import Record, read_dir, record_from_dict

BATCH_KEYS: tuple[str, ...] = ("tokens", "targets", "loss_mask", "segment_ids", "positions")
_SEQ_KEYS: tuple[str, ...] = ("tokens", "targets", "loss_mask")


class _ToRecord:
    """Source element (Record, dict, or tfds example with bytes) -> Record."""

    def __init__(self, spec: BehaviorSpec):
        self.spec = spec

    def __call__(self, element: Any) -> Record:
        if isinstance(element, Record):
            return element
        return record_from_dict(element, spec=self.spec, where=f"example {element.get('id', '?')!r}")


class _ToExample:
    """Record -> {tokens, targets, loss_mask} int32 arrays of length <= seq_len, or None (dropped)."""

    def __init__(self, formatter: Formatter, seq_len: int, to_record: _ToRecord):
        self.formatter, self.seq_len, self.to_record = formatter, seq_len, to_record

    def __call__(self, element: Any) -> dict[str, np.ndarray] | None:
        ex = self.formatter.render_example(self.to_record(element), max_len=self.seq_len + 1)
        if ex is None:
            return None
        ids = np.asarray(ex.input_ids, np.int32)
        mask = np.asarray(ex.loss_mask, np.int32)
        return {"tokens": ids[:-1], "targets": ids[1:], "loss_mask": mask[1:]}


class _PadOne:
    """No-packing mode: one example per row, right-padded."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len

    def __call__(self, ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(ex["tokens"])
        out = {k: np.zeros(self.seq_len, np.int32) for k in BATCH_KEYS}
        for k in _SEQ_KEYS:
            out[k][:n] = ex[k]
        out["segment_ids"][:n] = 1
        out["positions"][:n] = np.arange(n, dtype=np.int32)
        return out


_SUB_KEYS: tuple[str, ...] = ("sub_segment_ids", "sub_positions")


class _ToUnitExample:
    """A unit of shard indices (:mod:`bsft_jax.data.balance`) -> one element holding its scenes as
    sub-segments, or None when a scene cannot fit. A pair longer than ``seq_len`` is re-rendered with
    half a row per scene (contexts cut from the left, counted in ``stats`` as truncations)."""

    def __init__(self, formatter: Formatter, seq_len: int, records: list[Record]):
        self.formatter, self.seq_len, self.records = formatter, seq_len, records

    def _render(self, unit: tuple[int, ...], max_len: int) -> list[Any] | None:
        out = [self.formatter.render_example(self.records[i], max_len=max_len) for i in unit]
        return None if any(ex is None for ex in out) else out

    def __call__(self, unit: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        examples = self._render(unit, self.seq_len + 1)
        if examples is not None and sum(len(ex.input_ids) - 1 for ex in examples) > self.seq_len:
            examples = self._render(unit, self.seq_len // len(unit) + 1)
        if examples is None:
            return None
        parts: dict[str, list[np.ndarray]] = {k: [] for k in _SEQ_KEYS + _SUB_KEYS}
        for sub, ex in enumerate(examples, 1):
            ids, mask = np.asarray(ex.input_ids, np.int32), np.asarray(ex.loss_mask, np.int32)
            parts["tokens"].append(ids[:-1])
            parts["targets"].append(ids[1:])
            parts["loss_mask"].append(mask[1:])
            parts["sub_segment_ids"].append(np.full(len(ids) - 1, sub, np.int32))
            parts["sub_positions"].append(np.arange(len(ids) - 1, dtype=np.int32))
        return {k: np.concatenate(v) for k, v in parts.items()}


def _rename_units(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A packed row of units: segment ids from (element, sub-segment), positions from the sub-segment."""
    segments = merge_segments(row["tokens_segment_ids"], row["sub_segment_ids"])
    positions = np.where(segments > 0, row["sub_positions"], 0).astype(np.int32)
    return {"tokens": row["tokens"], "targets": row["targets"], "loss_mask": row["loss_mask"],
            "segment_ids": segments, "positions": positions}


def _balanced_examples(ds: grain.MapDataset, formatter: Formatter, to_record: _ToRecord, *, seq_len: int, seed: int,
                       num_epochs: int | None) -> grain.MapDataset:
    """The shard's stream of balanced units (see :mod:`bsft_jax.data.balance`), formatted."""
    records = [to_record(ds[i]) for i in range(len(ds))]
    units = BalancedUnits([decision_of(r) for r in records], seed)
    stream = grain.MapDataset.range(units.num_units).repeat(num_epochs)
    stream = stream.map_with_index(lambda index, _: units(index))
    return stream.map(_ToUnitExample(formatter, seq_len, records)).filter(lambda ex: ex is not None)


def _rename_packed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"tokens": row["tokens"], "targets": row["targets"], "loss_mask": row["loss_mask"],
            "segment_ids": row["tokens_segment_ids"], "positions": row["tokens_positions"]}


class BatchIterator(grain.DatasetIterator):
    """The trainer's iterator: ``next()`` gives a batch dict; ``get_state`` / ``set_state`` resume exactly.

    A ``grain.DatasetIterator`` (so grain's Orbax handler saves its JSON state). ``stats`` counts
    formatted, truncated and dropped examples of this process since it was built (formatting runs
    a few examples ahead of ``next``, in grain's prefetch threads).
    """

    def __init__(self, parent: grain.DatasetIterator, stats: FormatStats, num_records: int):
        super().__init__(parent)
        self.stats = stats
        self.num_records = num_records  # records in this process's shard (one epoch)

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


def as_map_dataset(records_or_source: Any) -> grain.MapDataset:
    """A ``grain.MapDataset`` over records: a list of Records, a directory of JSONL files, a
    ``tfds.data_source`` split (see :mod:`bsft_jax.data.tfds_builder`), or any random-access source."""
    if isinstance(records_or_source, grain.MapDataset):
        return records_or_source
    if isinstance(records_or_source, str | os.PathLike):
        records_or_source = read_dir(records_or_source)
    return grain.MapDataset.source(records_or_source)


def make_dataset(
    records_or_source: Any,
    tokenizer: Any,
    *,
    seq_len: int,
    batch_size: int,
    spec: BehaviorSpec | None = None,
    style: str = "behavior_sft",
    seed: int = 0,
    packing: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    shuffle: bool = True,
    packing_bins: int | None = None,
    few_shot: FewShotPool | None = None,
    system_prompt: str | None = None,
    read_threads: int = 2,
    balance: str = "",
) -> tuple[grain.IterDataset, Formatter, int]:
    """The pipeline as a ``grain.IterDataset`` (see module docstring), its formatter and shard size.

    ``balance="decision"``: steps 2-3 work on intervene/hold pairs (:mod:`bsft_jax.data.balance`), so
    every batch holds as many intervene as hold scenes; needs packing and shuffling.
    """
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {list(BALANCE_MODES)}, got {balance!r}")
    if balance and not (packing and shuffle):
        raise ValueError("balance='decision' needs packing=True and shuffle=True (pairs are packed as one element)")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"seq_len ({seq_len}) must be >= 2 and batch_size ({batch_size}) >= 1")
    spec = spec or BehaviorSpec()
    formatter = Formatter(tokenizer, style=style, spec=spec, few_shot=few_shot, system_prompt=system_prompt)
    ds = as_map_dataset(records_or_source)
    if len(ds) < process_count:
        raise ValueError(f"{len(ds)} records cannot be sharded over {process_count} processes")
    ds = ds[process_index::process_count]
    shard_size = len(ds)
    if balance:
        ds = _balanced_examples(ds, formatter, _ToRecord(spec), seq_len=seq_len, seed=seed, num_epochs=num_epochs)
    else:
        if shuffle:
            ds = ds.shuffle(seed=seed)
        ds = ds.repeat(num_epochs)
        ds = ds.map(_ToExample(formatter, seq_len, _ToRecord(spec))).filter(lambda ex: ex is not None)
    # Few formatting threads: tokenizing is cheap next to a train step, and on small hosts the
    # threads would compete with XLA's compute threads.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=8 * batch_size))
    if packing:
        keys = _SEQ_KEYS + (_SUB_KEYS if balance else ())
        it = grain.experimental.FirstFitPackIterDataset(
            it, length_struct={k: seq_len for k in keys}, num_packing_bins=packing_bins or batch_size,
            seed=seed, shuffle_bins=False)
        it = it.map(_rename_units if balance else _rename_packed)
    else:
        it = it.map(_PadOne(seq_len))
    # A short final batch is padded with empty rows, so every batch is [batch_size, seq_len].
    pad = functools.partial(grain.experimental.batch_and_pad, batch_size=batch_size)
    it = it.batch(batch_size, drop_remainder=False, batch_fn=pad)
    return it, formatter, shard_size


def make_train_iterator(
    records_or_source: Any,
    tokenizer: Any,
    *,
    seq_len: int,
    batch_size: int,
    spec: BehaviorSpec | None = None,
    style: str = "behavior_sft",
    seed: int = 0,
    packing: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    shuffle: bool = True,
    packing_bins: int | None = None,
    few_shot: FewShotPool | None = None,
    system_prompt: str | None = None,
    read_threads: int = 2,
    balance: str = "",
) -> BatchIterator:
    """The trainer's entry point: a checkpointable iterator of batches for this process.

    records_or_source: list of Records, a JSONL directory, or a ``tfds.data_source`` split.
    tokenizer:         HF tokenizer with a chat template (behavior tokens added for ``behavior_sft``).
    seq_len, batch_size: every batch is int32 ``[batch_size, seq_len]`` (batch_size per process).
    style:             a ``bsft_jax.data.format.STYLES`` entry; ``spec`` names the behavior tokens.
    seed:              shuffle seed (reseeded per epoch); ``shuffle=False`` keeps source order.
    packing:           first-fit packing of several examples per row (``packing_bins`` rows are
                       filled at a time, default ``batch_size``); False: one padded example per row.
    process_index, process_count: this process's static shard (``jax.process_index/count()``).
    num_epochs:        None repeats forever (use this for multi-process training).
    read_threads:      grain threads that format examples ahead of the trainer.
    balance:           "decision": every batch holds as many intervene as hold scenes
                       (:mod:`bsft_jax.data.balance`); "" (default): plain shuffled records.
    Returns a :class:`BatchIterator` yielding ``tokens, targets, loss_mask, segment_ids, positions``
    (PREAMBLE batch contract); ``it.stats`` reports truncated / dropped examples.
    """
    it_ds, formatter, shard_size = make_dataset(
        records_or_source, tokenizer, seq_len=seq_len, batch_size=batch_size, spec=spec, style=style, seed=seed,
        packing=packing, process_index=process_index, process_count=process_count, num_epochs=num_epochs,
        shuffle=shuffle, packing_bins=packing_bins, few_shot=few_shot, system_prompt=system_prompt,
        read_threads=read_threads, balance=balance)
    return BatchIterator(it_ds.__iter__(), formatter.stats, shard_size)


def global_batch(iterators: Sequence[BatchIterator]) -> dict[str, np.ndarray]:
    """Concatenates the next batch of each simulated process (process order) into the global batch.

    What a multi-host run sees as one global batch; single-process tests use it to compare.
    """
    batches = [next(it) for it in iterators]
    return {k: np.concatenate([b[k] for b in batches]) for k in BATCH_KEYS}
