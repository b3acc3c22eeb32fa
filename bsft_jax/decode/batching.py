"""Host-side batching shared by the sampler and scoring: size buckets, mesh placement, batch sharding.

Ragged inputs are padded to *bucketed* lengths and batch sizes, so that a new length inside a bucket
does not recompile; batches are sharded over the mesh axes of the ``batch`` logical axis.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from bsft_jax.models.decoder import Decoder
from bsft_jax.models.sharding import logical_to_spec, state_shardings

DEFAULT_MIN_PROMPT_BUCKET = 16


def bucket_size(n: int, buckets: Sequence[int] | None = None, *, minimum: int = 1, multiple: int = 1,
                half_steps: bool = False) -> int:
    """The bucket a size ``n`` is padded up to.

    With ``buckets`` (ascending), the smallest one >= n; beyond the largest, the next multiple of the
    largest. Without, the next power of two >= max(n, minimum), or with ``half_steps`` the next of
    2^k and 1.5 * 2^k (at most a third of padding: 537 -> 768, not 1024). The result is rounded up
    to ``multiple``.
    """
    if n < 1:
        raise ValueError(f"bucket_size: n must be >= 1, got {n}")
    if buckets:
        ordered = sorted(int(b) for b in buckets)
        size = next((b for b in ordered if b >= n), None)
        if size is None:
            size = -(-n // ordered[-1]) * ordered[-1]
    else:
        n = max(n, minimum)
        size = 1 << (n - 1).bit_length()
        if half_steps and size >= 4 and size * 3 // 4 >= n:
            size = size * 3 // 4
    return -(-size // multiple) * multiple


def data_parallel_size(mesh: Mesh | None) -> int:
    """How many ways the ``batch`` logical axis is split on ``mesh`` (batch sizes must be multiples)."""
    if mesh is None:
        return 1
    spec = logical_to_spec(("batch",), mesh=mesh)[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
    return math.prod(mesh.shape[a] for a in axes)


def split_and_place(model: Decoder, mesh: Mesh | None = None) -> tuple[nnx.GraphDef, nnx.State]:
    """``nnx.split(model)``, with the weights placed by the rules table on ``mesh`` when given."""
    graphdef, params = nnx.split(model)
    if mesh is not None:
        params = jax.device_put(params, state_shardings(params, mesh))
    return graphdef, params


def batch_arrays(arrays: Sequence[np.ndarray], mesh: Mesh | None) -> tuple[Any, ...]:
    """Host arrays with a leading batch axis, sharded over the data axes of ``mesh`` (as-is without one)."""
    if mesh is None:
        return tuple(arrays)
    return tuple(jax.device_put(a, NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (a.ndim - 1),
                                                                        mesh=mesh))) for a in arrays)


def fetch(tree: Any) -> Any:
    """The host values of a tree of arrays. On several processes a batch-sharded output spans devices
    of other hosts: those arrays are all-gathered (every process gets the whole batch), the rest are
    read as they are."""

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def mesh_context(mesh: Mesh | None) -> Any:
    """``jax.set_mesh(mesh)``, or a no-op context without a mesh."""
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
