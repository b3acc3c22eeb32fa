"""Byte sizes, both ways: the one parser (``"16GiB"``, ``"5GB"``, ``"80G"``) and the one formatter.

Hand-written because ``huggingface_hub``'s ``parse_size_to_int`` knows only decimal units (KB..TB), and
HBM sizes are binary (GiB).
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", re.IGNORECASE)


def parse_size(size: int | float | str) -> int:
    """``"16GiB"``, ``"95GB"``, ``"80G"``, ``"500MB"`` or a number -> bytes (``i``: powers of 1024)."""
    if isinstance(size, int | float):
        return int(size)
    m = _SIZE.fullmatch(str(size))
    if not m:
        raise ValueError(f"cannot read the size {size!r}; use e.g. '16GiB', '5GB' or '500MB'")
    power = "BKMGT".index(m.group(2).upper() or "B")
    return int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)


def human_bytes(n: float | None) -> str:
    """``1536`` -> ``"1.50 KiB"`` (binary units; ``"-"`` for None)."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"
