"""Deprecated: the config schema moved to :mod:`bsft_jax.setup.config`.

Config files written before the move (``from bsft_jax.run.config import default_config``) still load; each
name taken from here is :mod:`bsft_jax.setup.config`'s own and comes with a ``DeprecationWarning`` naming
the new path.
"""

from __future__ import annotations

import warnings
from typing import Any

from bsft_jax.setup import config as _config


def __getattr__(name: str) -> Any:
    """``bsft_jax.setup.config.<name>``, with a DeprecationWarning (PEP 562: also runs for ``from ... import``)."""
    if name.startswith("__") or not hasattr(_config, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"bsft_jax.run.config is deprecated: import {name} from bsft_jax.setup.config "
                  f"(from bsft_jax.setup.config import {name})", DeprecationWarning, stacklevel=2)
    return getattr(_config, name)
