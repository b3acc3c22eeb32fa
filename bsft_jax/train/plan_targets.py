"""The planner's targets: accelerator slices (chips, HBM per device), their devices, and the CLI's parsers."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any

import jax
from jax._src import xla_bridge  # backends_are_initialized has no public name
from jax.experimental import topologies

from bsft_jax.errors import UserError
from bsft_jax.units import parse_size

GiB = 1024**3


# ----------------------------------------------------------------------------- targets
@dataclasses.dataclass(frozen=True)
class Target:
    """A machine a recipe is planned for: devices (chips / GPUs), memory per device, TPU topology."""

    name: str
    num_devices: int
    hbm_bytes: int
    platform: str  # "tpu" | "gpu"
    topology: str | None = None  # get_topology_desc name, e.g. "v5p:2x4x4"
    chip_config: str | None = None  # "megacore" (v4/v5p: one device = one chip of 2 cores) or "default"
    note: str = ""


def _tpu_family(prefix: str, chips: dict[int, str], hbm_gib: float, chip_config: str) -> dict[str, Target]:
    cores_per_chip = 2 if chip_config == "megacore" else 1
    out = {}
    for n, topo in chips.items():
        name = f"{prefix}-{n * cores_per_chip}"
        out[name] = Target(name, n, int(hbm_gib * GiB), "tpu", f"{prefix}:{topo}", chip_config)
    return out


# Slice names count TensorCores for v4/v5p (2 per chip) and chips for v5e/v6e; a device is a chip.
TARGETS: dict[str, Target] = {
    **_tpu_family("v4", {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4"}, 32, "megacore"),
    **_tpu_family("v5p", {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4"}, 95, "megacore"),
    **_tpu_family("v5e", {8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}, 16, "default"),
    **_tpu_family("v6e", {8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}, 32, "default"),
    "8xh100": Target("8xh100", 8, 80 * GiB, "gpu", note="JAX preallocates 75% of GPU memory unless "
                                                             "XLA_PYTHON_CLIENT_MEM_FRACTION is raised"),
    "8xh200": Target("8xh200", 8, 141 * 10**9, "gpu", note="see 8xh100"),
    "8xa100-80gb": Target("8xa100-80gb", 8, 80 * GiB, "gpu", note="see 8xh100"),
}
ALIASES = {"v5litepod": "v5e", "v6e-lite": "v6e", "h100x8": "8xh100", "h200x8": "8xh200"}



class PlanError(UserError, ValueError):
    """The plan cannot be made (unknown target, mesh that does not fit, missing architecture)."""


def target_by_name(name: str) -> Target:
    """A known target (``v5p-64``, ``v5e-64``, ``v4-32``, ``8xh100`` ...), or PlanError listing them."""
    key = name.strip().lower()
    for old, new in ALIASES.items():
        key = key.replace(old, new)
    if key not in TARGETS:
        raise PlanError(f"--plan_target={name!r}: unknown; known targets: {', '.join(TARGETS)} "
                        "(or give --plan_devices and --plan_hbm)")
    return TARGETS[key]


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=1,fsdp=-1,tensor=4"`` -> ``{"data": 1, "fsdp": -1, "tensor": 4}`` (missing axes = 1)."""
    sizes = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(data|fsdp|tensor)\s*=\s*(-?\d+)", part)
        if not m:
            raise PlanError(f"--mesh={text!r}: expected e.g. 'data=1,fsdp=-1,tensor=4' (axes data, fsdp, tensor)")
        sizes[m.group(1)] = int(m.group(2))
    return sizes


def parse_bytes(text: str | int | float) -> int:
    """``"16GiB"``, ``"95GB"``, ``"80G"`` or a number of bytes (:func:`bsft_jax.units.parse_size`)."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise PlanError(str(e)) from None


# ----------------------------------------------------------------------------- devices
def backends_initialized() -> bool:
    """Whether JAX has started its backends (device flags can no longer change then)."""
    return xla_bridge.backends_are_initialized()


def tpu_compiler_available() -> bool:
    """Whether libtpu can be loaded (deviceless TPU compilation)."""
    return importlib.util.find_spec("libtpu") is not None or bool(os.environ.get("TPU_LIBRARY_PATH"))


def tpu_devices(target: Target) -> list[Any]:
    """Compile-only devices of a TPU slice (needs libtpu; no TPU hardware)."""
    for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                       ("TPU_ACCELERATOR_TYPE", target.name)):
        os.environ.setdefault(key, value)  # no metadata server off-TPU: do not wait for one
    kw: dict[str, Any] = {"chips_per_host_bounds": (2, 2, 1)}
    if target.chip_config:
        kw["chip_config_name"] = target.chip_config
    topo = topologies.get_topology_desc(platform="tpu", topology_name=target.topology, **kw)
    devices = list(topo.devices)
    if len(devices) != target.num_devices:
        raise PlanError(f"{target.name}: topology {target.topology} has {len(devices)} devices, expected "
                        f"{target.num_devices}")
    return devices


def cpu_devices(n: int) -> list[Any] | None:
    """``n`` CPU devices of this process, configuring them if JAX has not started; None if impossible."""
    if not backends_initialized():
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", max(n, 1))
    devices = jax.devices("cpu")
    return devices[:n] if len(devices) >= n else None
