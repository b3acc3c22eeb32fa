"""From the ``data`` config block to per-process batch iterators for the trainer.

Every iterator yields dicts of int32 numpy arrays ``[B_local, T]`` with the batch contract
(``tokens, targets, loss_mask, segment_ids, positions``) and is a Grain ``DatasetIterator``,
so its position is saved in checkpoints with ``grain.checkpoint.CheckpointSave`` and restored to
the exact next batch.

Sources:

* ``synthetic``: packed copy-task rows (``BOS prompt SEP prompt EOS``; the copy is the
  assistant part), a pure function of ``(seed, batch index, global row)``: the same global batch
  whatever the number of processes. Used by tests and for quick smoke runs.
* ``demo`` / ``jsonl`` / ``tfds``: BehaviorBench records through the Grain pipeline of
  :mod:`bsft_jax.data` (chat-template formatting with or without the behavior token, packing,
  per-process shards, seeded shuffle).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from bsft_jax import storage
from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.data.pipeline import BATCH_KEYS
from bsft_jax.data.pipeline import make_train_iterator as data_iterator
from bsft_jax.data.schema import DataError
from bsft_jax.setup.settings import DataSettings
from bsft_jax.setup.sources import load_split
from bsft_jax.train.distributed import DataShard, reduce_over_processes

# Synthetic token ids: 0 pad, 1 BOS, 2 SEP, 3 EOS, content from 4.
_PAD, _BOS, _SEP, _EOS, _FIRST = 0, 1, 2, 3, 4


def synthetic_row(seed: int, batch_index: int, row: int, length: int, vocab: int) -> dict[str, np.ndarray]:
    """One packed row of copy-task examples: deterministic in (seed, batch_index, global row)."""
    rng = np.random.default_rng([seed, batch_index, row])
    out = {k: np.zeros(length, np.int32) for k in BATCH_KEYS}
    pos, segment = 0, 0
    while True:
        n = int(rng.integers(2, 9))
        prompt = rng.integers(_FIRST, vocab, n)
        seq = np.concatenate([[_BOS], prompt, [_SEP], prompt, [_EOS]]).astype(np.int32)
        if pos + len(seq) > length:
            break
        segment += 1
        sl = slice(pos, pos + len(seq))
        out["tokens"][sl] = seq
        out["targets"][pos:pos + len(seq) - 1] = seq[1:]
        answer_from = n + 1  # position of SEP: from here on the next token is part of the answer
        out["loss_mask"][pos + answer_from:pos + len(seq) - 1] = 1
        out["segment_ids"][sl] = segment
        out["positions"][sl] = np.arange(len(seq))
        pos += len(seq)
    return out


@dataclasses.dataclass(frozen=True)
class _SyntheticBatch:
    seed: int
    shard: DataShard
    length: int
    vocab: int

    def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
        first = self.shard.index * self.shard.rows
        rows = [synthetic_row(self.seed, int(batch_index), first + r, self.length, self.vocab)
                for r in range(self.shard.rows)]
        return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}


def synthetic_dataset(seed: int, shard: DataShard, length: int, vocab: int, num_batches: int = 10**9
                      ) -> grain.IterDataset:
    """An endless (``num_batches``) dataset of this process's synthetic batches."""
    if vocab <= _FIRST:
        raise ValueError(f"config.data.synthetic_vocab must be > {_FIRST}, got {vocab}")
    return grain.MapDataset.range(num_batches).map(_SyntheticBatch(seed, shard, length, vocab)).to_iter_dataset()


def _pipeline_kwargs(data: DataSettings, spec: BehaviorSpec, shard: DataShard) -> dict[str, Any]:
    return dict(seq_len=data.seq_len, batch_size=shard.rows, spec=spec, style=data.style, seed=data.shuffle_seed,
                packing=data.packing, process_index=shard.index, process_count=shard.count)


def load_splits(data: DataSettings, spec: BehaviorSpec, *, with_eval: bool, num_processes: int = 1
                ) -> dict[str, Any]:
    """The records of the splits a run reads (train, and the eval split when ``with_eval``).

    Called before the run directory is touched, so a bad data file (:class:`bsft_jax.data.DataError`
    naming ``file:line``, an empty file, fewer records than processes) stops the run with nothing
    written. Empty for ``synthetic`` data.
    """
    if data.source == "synthetic":
        return {}
    names = [data.train_split] + ([data.eval_split] if with_eval else [])
    splits = {name: load_split(data, spec, name) for name in dict.fromkeys(names)}
    for name, records in splits.items():
        if len(records) < num_processes:  # every process reads its own shard of each split
            raise DataError(f"{storage.join(data.path, name + '.jsonl') if data.source == 'jsonl' else name}: "
                            f"{len(records)} record(s) cannot be shared by {num_processes} processes; add records "
                            "or run fewer processes")
    return splits


def train_iterator(data: DataSettings, spec: BehaviorSpec, tokenizer: Any, shard: DataShard, records: Any = None
                   ) -> Iterator[dict[str, np.ndarray]]:
    """This process's endless, shuffled training iterator (a Grain DatasetIterator: checkpointable).

    ``records``: the training split already loaded (:func:`load_splits`); default: load it here.
    """
    if data.source == "synthetic":
        return iter(synthetic_dataset(data.shuffle_seed, shard, data.seq_len, data.synthetic_vocab))
    # Epochs repeat forever and the run stops by step count: with several processes the shards
    # can differ by one example, and every process must produce a batch at every step.
    records = load_split(data, spec, data.train_split) if records is None else records
    return data_iterator(records, tokenizer, num_epochs=None, shuffle=True, balance=data.balance,
                         **_pipeline_kwargs(data, spec, shard))


def make_eval_batches(data: DataSettings, spec: BehaviorSpec, tokenizer: Any, shard: DataShard, records: Any = None
                      ) -> list[dict[str, np.ndarray]]:
    """This process's held-out batches: one pass over ``data.eval_split`` in order (a fixed list).

    ``records``: the eval split already loaded (:func:`load_splits`); default: load it here.

    Every process returns the same number of batches (empty rows pad the shorter ones), so that
    the collective evaluation step runs in lock step across processes.
    """
    d = data
    limit = None if d.eval_batches < 0 else d.eval_batches
    if d.source == "synthetic":
        ds = synthetic_dataset(d.shuffle_seed + 1_000_003, shard, d.seq_len, d.synthetic_vocab,
                               num_batches=4 if limit is None else limit)
        return list(ds)
    records = load_split(d, spec, d.eval_split) if records is None else records
    it = data_iterator(records, tokenizer, num_epochs=1, shuffle=False, **_pipeline_kwargs(d, spec, shard))
    batches = list(itertools.islice(it, limit))
    count = int(reduce_over_processes(np.asarray(len(batches), np.int32), np.max))
    empty = {k: np.zeros((shard.rows, d.seq_len), np.int32) for k in BATCH_KEYS}
    return batches + [empty] * (count - len(batches))


def truncation_warning(stats: Any, data: DataSettings, warned: int) -> str | None:
    """A warning when the training stream has cut scenes: the first time, then whenever the count has doubled since
    the ``warned`` count last reported (a log line, not one per step); else None.

    The formatter keeps a scene's reply and cuts its prompt from the left when it does not fit
    (``stats``: :class:`bsft_jax.data.format.FormatStats` of the train iterator). For a decision that
    is fatal: the cut part is the chart, the evidence the reply must read, and with ``balance="decision"``
    each scene of a pair gets only half a row. Measured: Critical Value scenes (~190 tokens) at
    ``seq_len=256`` lost their lab values; the model fitted a length artefact of the cut prompts (train
    first-token loss 0.000) and scored 50% on untruncated test scenes (docs/evaluation.md).
    """
    cut = int(getattr(stats, "truncated", 0) or 0)
    if cut == 0 or (warned and cut < 2 * warned):
        return None
    per_scene = data.seq_len // 2 if data.balance == "decision" else data.seq_len
    return (f"training data: {cut} of {int(stats.examples)} scenes formatted so far were cut from the left to fit "
            f"{per_scene} tokens (data.seq_len={data.seq_len}"
            f"{', half a row per scene of a balanced pair' if data.balance == 'decision' else ''}); "
            f"{int(stats.dropped)} dropped. A cut scene may have lost what its reply depends on: raise data.seq_len")
