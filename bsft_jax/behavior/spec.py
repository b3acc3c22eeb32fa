"""The behavior token set, as data: names, their special-token strings, and the category map.

Pure (no JAX): the data schema and the formatter import it. BehaviorSFT trains the assistant turn to
start with the behavior token, so the model first chooses how to act, then acts conditioned on that
choice. The vocabulary surgery that adds these tokens to a model lives in
:mod:`bsft_jax.behavior.surgery`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from bsft_jax.behavior import taxonomy

DEFAULT_BEHAVIORS: tuple[str, ...] = taxonomy.GROUPS
DEFAULT_TOKEN_FORMAT = "<|behavior:{name}|>"


@dataclasses.dataclass(frozen=True)
class BehaviorSpec:
    """Which behavior tokens exist and which one each task category uses.

    names:         behavior names, e.g. ("reactive", "balanced", "proactive").
    token_format:  how a name becomes its special-token string.
    category_map:  category -> behavior name; categories not listed use their taxonomy group.
    """

    names: tuple[str, ...] = DEFAULT_BEHAVIORS
    token_format: str = DEFAULT_TOKEN_FORMAT
    category_map: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "category_map", dict(self.category_map))
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"behavior names must be non-empty and unique, got {self.names}")
        if "{name}" not in self.token_format:
            raise ValueError(f"behavior token_format must contain '{{name}}', got {self.token_format!r}")
        for category, name in self.category_map.items():
            if name not in self.names:
                raise ValueError(f"behavior category_map[{category!r}] = {name!r} is not one of {self.names}")

    @property
    def tokens(self) -> tuple[str, ...]:
        """Special-token strings, in ``names`` order."""
        return tuple(self.token_format.format(name=n) for n in self.names)

    def token(self, name: str) -> str:
        """The token string of a behavior name."""
        if name not in self.names:
            raise KeyError(f"unknown behavior {name!r}; expected one of {self.names}")
        return self.token_format.format(name=name)

    def behavior_for_category(self, category: str) -> str:
        """Behavior name a category uses by default (explicit map first, then its group)."""
        if category in self.category_map:
            return self.category_map[category]
        group = taxonomy.group_of(category)
        if group not in self.names:
            raise KeyError(f"category {category!r} (group {group!r}) has no behavior; add it to category_map")
        return group

    def name_of_token(self, token: str) -> str | None:
        """Inverse of :meth:`token` (None for any other string)."""
        for n, t in zip(self.names, self.tokens):
            if t == token:
                return n
        return None
