"""From the ``data`` config block to per-process batch iterators for the trainer.

Every iterator yields dicts of int32 numpy arrays ``[B_local, T]`` with the batch contract
(``tokens, targets, loss_mask, segment_ids, positions``) and is a Grain ``DatasetIterator``,
so its position is saved in checkpoints with ``grain.checkpoint.CheckpointSave`` and restored to
the exact next batch.

Sources:

* ``synthetic``: packed copy-task rows (``BOS prompt SEP prompt EOS``; the copy is the
  assistant part), a pure function of ``(seed, batch index, global row)``: the same global batch
  whatever the number of processes. Used by tests and for quick smoke runs.
* ``demo`` / ``jsonl``: the BehaviorBench pipeline of :mod:`bsft_jax.data`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from bsft_jax.distributed import DataShard

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")
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


def make_train_iterator(cfg: Any, tokenizer: Any, shard: DataShard) -> Iterator[dict[str, np.ndarray]]:
    """The training batch iterator of this process (checkpointable: ``get_state`` / ``set_state``)."""
    d = cfg.data
    if d.source == "synthetic":
        return iter(synthetic_dataset(d.shuffle_seed, shard, d.max_length, d.synthetic_vocab))
    raise NotImplementedError(f"config.data.source={d.source!r}: the BehaviorBench pipeline is not wired yet")


def make_eval_batches(cfg: Any, tokenizer: Any, shard: DataShard) -> list[dict[str, np.ndarray]]:
    """Held-out batches of this process, same shapes as training batches (a fixed list)."""
    d = cfg.data
    if d.source == "synthetic":
        n = 4 if d.eval_batches < 0 else d.eval_batches
        ds = synthetic_dataset(d.shuffle_seed + 1_000_003, shard, d.max_length, d.synthetic_vocab, num_batches=n)
        return list(ds)
    raise NotImplementedError(f"config.data.source={d.source!r}: the BehaviorBench pipeline is not wired yet")
