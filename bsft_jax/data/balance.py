"""Batches balanced by behavior: every batch holds as many *intervene* as *hold* scenes.

With ``config.data.balance = "decision"`` the training stream is made of **units** instead of single
records: one intervene scene paired with one hold scene (a *pair*), or one record that takes no
decision (a reactive, multiple-choice item). A unit is formatted and packed as one element, its two
scenes as two segments of the same row (own segment ids, positions restarting at 0), so packing can
never split a pair: every row, and so every batch, has exactly as many intervene as hold scenes,
whatever the packer does with the rest.

Per epoch ``e`` the units are drawn afresh from ``numpy.random.default_rng([seed, e])``: both
decision lists are shuffled, zipped into pairs (the shorter list is cycled to the longer one's length,
so every scene of the larger class is seen each epoch and a few of the other class twice), and the
pairs and the single records are shuffled together. The unit of index ``k`` in the repeated stream is a
pure function of ``(seed, k)``, so grain's iterator state (a position) resumes at the identical batch.

Why: with a packed stream the label mix of the last few batches steers a small model toward
"always intervene" or "always hold" (seen in the 48-step demo); pairs remove that drift and put both
sides of the decision into every gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bsft_jax.data.schema import Record

BALANCE_MODES: tuple[str, ...] = ("", "decision")


def decision_of(record: Record) -> str:
    """``"intervene"``, ``"hold"`` (an open scene that needs no comment) or ``"none"`` (multiple choice)."""
    if record.is_multiple_choice:
        return "none"
    return "intervene" if record.intervenes else "hold"


class BalancedUnits:
    """The units of one shard of records, per epoch (see the module docstring).

    ``decisions``: the decision of each record of the shard, in shard order.
    """

    def __init__(self, decisions: Sequence[str], seed: int):
        d = np.asarray(list(decisions))
        self.seed = int(seed)
        self.intervene = np.flatnonzero(d == "intervene")
        self.hold = np.flatnonzero(d == "hold")
        self.single = np.flatnonzero(d == "none")
        if bool(len(self.intervene)) != bool(len(self.hold)):
            # one side missing: nothing to pair; every open scene goes alone
            self.single = np.sort(np.concatenate([self.single, self.intervene, self.hold]))
            self.intervene = self.hold = np.zeros(0, np.int64)
        self.num_pairs = max(len(self.intervene), len(self.hold))
        self.num_units = self.num_pairs + len(self.single)
        if self.num_units == 0:
            raise ValueError("no records to balance")
        self._cache: tuple[int, list[tuple[int, ...]]] | None = None

    def epoch(self, e: int) -> list[tuple[int, ...]]:
        """The units of epoch ``e``, in the order they are read: tuples of shard indices."""
        if self._cache is not None and self._cache[0] == e:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, int(e)])
        units: list[tuple[int, ...]] = []
        if self.num_pairs:
            a, b = rng.permutation(self.intervene), rng.permutation(self.hold)
            a = np.resize(a, self.num_pairs)  # cycles the shorter list
            b = np.resize(b, self.num_pairs)
            # which of the two scenes comes first in its row is drawn too (the order is no cue)
            first = rng.random(self.num_pairs) < 0.5
            units += [(int(x), int(y)) if f else (int(y), int(x)) for x, y, f in zip(a, b, first, strict=True)]
        units += [(int(i),) for i in self.single]
        order = rng.permutation(len(units))
        out = [units[i] for i in order]
        self._cache = (e, out)
        return out

    def __call__(self, index: int) -> tuple[int, ...]:
        """The unit at position ``index`` of the repeated stream."""
        e, i = divmod(int(index), self.num_units)
        return self.epoch(e)[i]


def merge_segments(packed_segment_ids: np.ndarray, sub_segment_ids: np.ndarray) -> np.ndarray:
    """Segment ids of a packed row whose elements carry sub-segments (pairs): 1..n in row order, 0 = padding.

    ``packed_segment_ids``: the packer's id of the element each position belongs to (0 = padding).
    ``sub_segment_ids``: the position's segment inside its element (1 or 2).
    """
    combined = np.where(packed_segment_ids > 0, packed_segment_ids * 4 + sub_segment_ids, 0)
    out = np.zeros_like(packed_segment_ids)
    change = np.ones(combined.shape[-1], bool)
    change[1:] = combined[1:] != combined[:-1]
    out[combined > 0] = np.cumsum(change & (combined > 0))[combined > 0]
    return out.astype(packed_segment_ids.dtype)
