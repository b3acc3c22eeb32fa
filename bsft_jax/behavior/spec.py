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
# The item-level scheme: the token names the decision the reply makes on THIS scene, along the
# paper's reactive <-> proactive spectrum. "answer": a question was asked and answering it is all
# that is needed (reactive); "intervene": speak up, unasked, about something wrong or missing
# (helpful proactivity); "hold": the scene invites a comment but none is warranted (necessary
# restraint). The group scheme instead gives every item of a category the same token.
SCHEMES: tuple[str, ...] = ("group", "item")
ITEM_BEHAVIORS: tuple[str, ...] = ("answer", "intervene", "hold")
NO_INTERVENTION_LABEL = "none"  # the restraint label (bsft_jax.data.schema.NO_INTERVENTION)


@dataclasses.dataclass(frozen=True)
class BehaviorSpec:
    """Which behavior tokens exist and which one each task category uses.

    names:         behavior names, e.g. ("reactive", "balanced", "proactive").
    token_format:  how a name becomes its special-token string.
    category_map:  category -> behavior name; categories not listed use their taxonomy group.
    scheme:        "group" (one token per category, via category_map / group) or "item" (the token
                   follows the item's decision: :data:`ITEM_BEHAVIORS`; names must include them).
    """

    names: tuple[str, ...] = DEFAULT_BEHAVIORS
    token_format: str = DEFAULT_TOKEN_FORMAT
    category_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    scheme: str = "group"

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
        if self.scheme not in SCHEMES:
            raise ValueError(f"behavior scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.scheme == "item" and not set(ITEM_BEHAVIORS) <= set(self.names):
            raise ValueError(f"behavior scheme 'item' needs names {ITEM_BEHAVIORS}, got {self.names}")

    @classmethod
    def item_scheme(cls, token_format: str = DEFAULT_TOKEN_FORMAT) -> BehaviorSpec:
        """The item-level spec: names ("answer", "intervene", "hold"), scheme "item"."""
        return cls(names=ITEM_BEHAVIORS, token_format=token_format, scheme="item")

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

    def behavior_for_item(self, category: str, label: str, multiple_choice: bool) -> str:
        """Behavior name of one item: its category's under the group scheme, its decision under "item"."""
        if self.scheme == "group":
            return self.behavior_for_category(category)
        if multiple_choice:
            return "answer"
        return "hold" if label == NO_INTERVENTION_LABEL else "intervene"

    def name_of_token(self, token: str) -> str | None:
        """Inverse of :meth:`token` (None for any other string)."""
        for n, t in zip(self.names, self.tokens):
            if t == token:
                return n
        return None
