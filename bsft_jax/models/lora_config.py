"""LoRA's settings as the decoder sees them (pure: no JAX), and the projection names adapters target.

:class:`LoraConfig` rides on :class:`~bsft_jax.models.config.DecoderConfig` (``config.lora``); the
run config's ``model.lora`` block becomes one through :class:`bsft_jax.setup.settings.LoraSettings`.
The adapter parameters and their math live in :mod:`bsft_jax.models.lora`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

ATTENTION_TARGETS = ("q", "k", "v", "o")
MLP_TARGETS = ("gate", "up", "down")
TARGETS = ATTENTION_TARGETS + MLP_TARGETS



@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r, alpha (scale alpha / r), dropout on the adapter input, and the target projections."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if int(self.rank) < 0:
            raise ValueError(f"lora.rank must be >= 0, got {self.rank}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"lora.targets: unknown {unknown}; expected names from {TARGETS}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")

    @property
    def enabled(self) -> bool:
        """True when the decoder gets adapters (rank > 0 and at least one target)."""
        return int(self.rank) > 0 and bool(self.targets)

    @property
    def scale(self) -> float:
        """alpha / rank, the factor applied to ``x A B``."""
        return float(self.alpha) / int(self.rank)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"rank": int(self.rank), "alpha": float(self.alpha), "dropout": float(self.dropout),
                "targets": list(self.targets)}


def lora_config_from(fields: Any) -> LoraConfig | None:
    """A LoraConfig from a dict (a checkpoint's meta) or an object with rank, alpha, dropout, targets; None when off."""
    if fields is None:
        return None
    get = fields.get if isinstance(fields, dict) else lambda k, d=None: getattr(fields, k, d)
    targets = get("targets", TARGETS)
    if isinstance(targets, str):
        targets = tuple(t.strip() for t in targets.split(",") if t.strip())
    lc = LoraConfig(rank=int(get("rank", 0) or 0), alpha=float(get("alpha", 16.0)),
                    dropout=float(get("dropout", 0.0)), targets=tuple(targets))
    return lc if lc.enabled else None
