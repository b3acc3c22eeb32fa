"""Device mesh and the one logical-axis rules table.

Every parameter carries logical axis names in its ``logical_axes`` metadata (e.g. ``("embed",
"q_heads", "head_dim")``); activations are constrained with logical names at block boundaries.
This module alone maps logical names to the mesh axes ``data``, ``fsdp`` and ``tensor``.

Rules that would put two logical axes of one array on the same mesh axis are rejected. A
dimension that a mesh axis does not divide (e.g. 4 KV heads on an 8-way ``tensor`` axis) is
replicated on that axis rather than failing, which is what a user of a fixed mesh wants for
small models; :func:`logical_to_spec` reports it when asked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# The rules table. Parameters: ``embed`` is FSDP-sharded, head/MLP/vocab dims tensor-parallel.
# Activations: batch over data x fsdp; the activation hidden dim stays whole.
DEFAULT_RULES: Rules = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    ("lora_rank", None),  # LoRA factors: the rank axis is small, replicated
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_length", None),
)


def current_rules() -> Rules:
    """The rules table in effect (the one table: there is no per-run override)."""
    return DEFAULT_RULES


def resolve_mesh_shape(shape: Mapping[str, int] | Sequence[int], num_devices: int) -> dict[str, int]:
    """(data, fsdp, tensor) sizes with the one ``-1`` ("all remaining devices") resolved.

    The one home of this rule: the config validation, the planner and :func:`make_mesh` all call it.
    Raises ValueError with a message that starts with the shape, e.g. ``(data=3, fsdp=-1, tensor=1) does
    not divide ...``; callers prefix the field it came from.
    """
    if isinstance(shape, Mapping):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"unknown axis name(s) {sorted(unknown)}; expected {MESH_AXES}")
        sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
    else:
        if len(shape) != len(MESH_AXES):
            raise ValueError(f"expected {len(MESH_AXES)} sizes for {MESH_AXES}, got {list(shape)}")
        sizes = dict(zip(MESH_AXES, (int(s) for s in shape)))
    shown = "(" + ", ".join(f"{a}={s}" for a, s in sizes.items()) + ")"
    if sum(s == -1 for s in sizes.values()) > 1:
        raise ValueError(f"{shown}: at most one axis may be -1")
    for a, s in sizes.items():
        if s == 0 or s < -1:
            raise ValueError(f"{shown}: {a} must be a positive size or -1, got {s}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if -1 in sizes.values():
        if num_devices % known:
            raise ValueError(f"{shown} does not divide the {num_devices} available devices "
                             f"({num_devices} devices are not divisible by {known}); change the mesh sizes")
        sizes[next(a for a, s in sizes.items() if s == -1)] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"{shown} needs {math.prod(sizes.values())} devices but {num_devices} are available; "
                         "set one axis to -1 or change the sizes")
    return sizes


def make_mesh(shape: Mapping[str, int] | Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh; one size may be -1 meaning "all remaining devices".

    Axes are ``Auto`` (GSPMD-style) so ``with_sharding_constraint`` works inside jit.
    """
    devices = list(devices if devices is not None else jax.devices())
    try:
        sizes = resolve_mesh_shape(shape, len(devices))
    except ValueError as e:
        raise ValueError(f"mesh {e}") from None
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(sizes.values()), MESH_AXES, axis_types=auto, devices=devices)


def logical_to_spec(
    logical_axes: Sequence[str | None] | None,
    *,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
    rules: Rules | None = None,
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec using the rules table.

    With ``mesh`` and ``shape`` given, a mesh axis that does not divide its dimension is dropped
    (that dimension is replicated on it). Raises if two logical axes land on one mesh axis.
    """
    if logical_axes is None:
        return PartitionSpec()
    table = dict(rules if rules is not None else current_rules())
    used: dict[str, str] = {}
    spec: list[MeshAxes] = []
    for dim, name in enumerate(logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no entry in the sharding rules table")
        target = table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        kept = []
        for ax in axes:
            if mesh is not None and ax not in mesh.shape:
                continue
            if ax in used:
                raise ValueError(
                    f"sharding rules put logical axes {used[ax]!r} and {name!r} of one array on mesh axis {ax!r}"
                )
            kept.append(ax)
        if mesh is not None and shape is not None:
            size = shape[dim]
            divisible = []
            for ax in kept:
                n = mesh.shape[ax]
                if size % (n * math.prod(mesh.shape[a] for a in divisible)) == 0:
                    divisible.append(ax)
            kept = divisible
        for ax in kept:
            used[ax] = name
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """NamedSharding for every Variable in an (abstract or concrete) NNX state, from its metadata.

    Variables without ``logical_axes`` (e.g. step counters) are replicated.
    """

    def one(v: Any) -> Any:
        if _is_variable(v):
            value = v.get_value() if hasattr(v, "get_value") else v.value
            axes = v.get_metadata().get("logical_axes")
            shape = getattr(value, "shape", ())
            if axes is not None and len(axes) != len(shape):
                raise ValueError(f"logical_axes {axes} do not match the shape {tuple(shape)} of a parameter")
            return v.replace(NamedSharding(mesh, logical_to_spec(axes, mesh=mesh, shape=shape, rules=rules)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=_is_variable)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a [B, T, ...] batch array: B over (data, fsdp), the rest replicated."""
    names = ("batch",) + (None,) * (ndim - 1)
    return NamedSharding(mesh, logical_to_spec(names, mesh=mesh))


def active_mesh() -> Any:
    """The mesh set with ``jax.set_mesh`` (or a ``with mesh:`` block), or None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is not None and not mesh.empty:
        return mesh
    return None


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names when a mesh is active; a no-op otherwise."""
    mesh = active_mesh()
    if mesh is None:
        return x
    spec = logical_to_spec(logical_axes, mesh=mesh, shape=x.shape)
    return jax.lax.with_sharding_constraint(x, spec)
