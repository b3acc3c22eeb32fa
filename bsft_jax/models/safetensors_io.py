"""Minimal streaming safetensors reader/writer on numpy (bf16 via ml_dtypes).

Reading memory-maps the file and yields one tensor at a time, so peak host memory while loading
is one tensor beyond what the caller keeps. A file on an object store (``gs://``) is streamed the
same way without touching local disk: the header is read first, then each tensor with one ranged
read of its bytes (a 5 GB shard is never downloaded whole). Writing takes the tensor list up front
(names, shapes and dtypes fix the header) and asks for each tensor's bytes only when it is written.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from bsft_jax import storage
from bsft_jax.errors import UserError

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in _DTYPES.items()}


class SafetensorsError(UserError, ValueError):
    """A safetensors file is malformed or holds something we cannot read."""


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: name, dtype code ("BF16", ...), shape and byte range in the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parses the header: (tensors by name, metadata, byte offset of the data section)."""
    path = os.fspath(path)
    with storage.open_file(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: file too short to be safetensors")
        (n,) = struct.unpack("<Q", raw)
        size = storage.size(path)
        if n > size - 8:
            raise SafetensorsError(f"{path}: header length {n} exceeds the file size {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        tensors[name] = TensorInfo(name, entry["dtype"], tuple(entry["shape"]), start, end)
    return tensors, metadata, 8 + n


def iter_tensors(path: str | os.PathLike, names: Sequence[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, array) in file order; arrays are read-only views of a memory map."""
    tensors, _, data_start = read_header(path)
    remote = storage.is_url(path)
    source = storage.open_file(path, "rb") if remote else np.memmap(os.fspath(path), dtype=np.uint8, mode="r")
    wanted = set(names) if names is not None else None
    try:
        for info in sorted(tensors.values(), key=lambda t: t.start):
            if wanted is not None and info.name not in wanted:
                continue
            dtype = _DTYPES[info.dtype]
            count = int(np.prod(info.shape, dtype=np.int64))
            if info.end - info.start != count * dtype.itemsize:
                raise SafetensorsError(f"{path}: tensor {info.name!r} byte range does not match its shape {info.shape}")
            lo, hi = data_start + info.start, data_start + info.end
            if remote:  # one ranged read of this tensor's bytes
                buf = np.frombuffer(storage.read_range(source, lo, hi), np.uint8)
            else:
                buf = source[lo:hi]
            yield info.name, buf.view(dtype).reshape(info.shape)
    finally:
        if remote:
            source.close()
        del source


@dataclass(frozen=True)
class PendingTensor:
    """A tensor to write: its bytes are produced by ``produce()`` only when written."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def write_file(path: str | os.PathLike, tensors: Sequence[PendingTensor], metadata: dict[str, str] | None = None):
    """Writes a safetensors file, producing and writing one tensor at a time."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for t in tensors:
        dtype = np.dtype(t.dtype)
        if dtype not in _CODES:
            raise SafetensorsError(f"tensor {t.name!r}: cannot write dtype {dtype}")
        header[t.name] = {"dtype": _CODES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)

    def write() -> None:
        with storage.open_file(path, "wb") as f:  # a URL: streamed upload, object visible on close
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for t in tensors:
                arr = np.ascontiguousarray(t.produce())
                if arr.shape != tuple(t.shape) or arr.dtype != np.dtype(t.dtype):
                    raise SafetensorsError(
                        f"tensor {t.name!r}: produced {arr.dtype}{arr.shape}, header says {np.dtype(t.dtype)}{t.shape}"
                    )
                f.write(arr.reshape(-1).view(np.uint8).data)

    if storage.is_url(path):  # an upload that failed for good left no object: write the whole file again
        storage.retry(write, f"upload {path}")
    else:
        write()
