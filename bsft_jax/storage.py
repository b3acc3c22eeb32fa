"""Paths that may be local or a bucket URL (``gs://bucket/run``): the one file-system layer.

Every path bsft_jax reads or writes (run directories, data, HF model folders, exports, reports)
goes through these functions. Local paths use ``os`` and ``open`` exactly as before; URLs
(``gs://``, and whatever else ``etils.epath`` knows: ``s3://``, ...) go through
``etils.epath``, the layer Orbax, TFDS and Grain use, which reaches GCS through ``gcsfs``
(``pip install 'bsft_jax[gcs]'``). Credentials are the environment's defaults (Application
Default Credentials on a TPU VM or GKE node; ``gcloud auth application-default login`` on a
workstation): nothing here takes or logs a key.

Object stores differ from a POSIX disk in two ways that matter here, and the helpers say how:

* there is no rename: one object appears whole when its upload finishes (so a single file is
  written by buffering it and uploading once), and a folder is "committed" by copying its objects
  from a temporary prefix, the file readers open first (``config.json``) last (:func:`commit_dir`);
* there is no append: :class:`AppendLog` keeps the file's lines and re-uploads the object.

Libraries that need a local folder (``transformers.AutoTokenizer``) get a downloaded copy of the
small files only (:func:`local_copy`); weights are streamed (ranged reads, :func:`read_range`).
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import IO, Any

# Weight files are never downloaded by local_copy: they are streamed (safetensors) or not used.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".gguf", ".ckpt")
# Written last when a folder is committed: the file an HF (or PEFT adapter) reader opens first.
COMMIT_LAST = ("config.json", "adapter_config.json")


def is_url(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` paths (gs://, s3://, ...), False for local ones."""
    return "://" in os.fspath(path)


def _epath(path: str | os.PathLike) -> Any:
    _configure_fsspec()
    from etils import epath

    return epath.Path(os.fspath(path))


_CONFIGURED = False


def _configure_fsspec() -> None:
    """Turns off gcsfs's listing cache: other hosts and Orbax's tensorstore writes change the bucket."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    import fsspec

    fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)
    fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)
    _CONFIGURED = True


def abspath(path: str | os.PathLike) -> str:
    """``os.path.abspath`` for local paths; a URL without its trailing slash."""
    path = os.fspath(path)
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def join(base: str | os.PathLike, *parts: str) -> str:
    """``os.path.join`` for local paths, ``/``-joined for URLs."""
    base = os.fspath(base)
    if is_url(base):
        return posixpath.join(base.rstrip("/") + "/", *parts) if parts else base
    return os.path.join(base, *parts)


def dirname(path: str | os.PathLike) -> str:
    """The parent folder (``gs://b/x/y`` -> ``gs://b/x``)."""
    path = os.fspath(path)
    return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(path)


def basename(path: str | os.PathLike) -> str:
    """The last component, trailing slash ignored."""
    path = os.fspath(path)
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(os.path.normpath(path))


def exists(path: str | os.PathLike) -> bool:
    """Whether a file or folder (for URLs: an object or a non-empty prefix) exists."""
    return _epath(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder (for URLs: a prefix holding objects)."""
    return _epath(path).is_dir() if is_url(path) else os.path.isdir(path)


def isfile(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file (for URLs: an object)."""
    return _epath(path).is_file() if is_url(path) else os.path.isfile(path)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names in a folder (not full paths), like ``os.listdir``."""
    if not is_url(path):
        return os.listdir(path)
    return [p.name for p in _epath(path).iterdir()]


def makedirs(path: str | os.PathLike) -> None:
    """``os.makedirs(path, exist_ok=True)``; nothing to do on an object store (prefixes are implicit)."""
    if is_url(path):
        return
    os.makedirs(path, exist_ok=True)


def size(path: str | os.PathLike) -> int:
    """File size in bytes."""
    return int(_epath(path).stat().length) if is_url(path) else os.path.getsize(path)


def open_file(path: str | os.PathLike, mode: str = "r", encoding: str | None = "utf-8") -> IO[Any]:
    """``open(path, mode)``; for URLs a streaming file object (reads are ranged, writes upload on close).

    A URL opened for writing uploads even when the ``with`` block fails: use :func:`write_bytes` /
    :func:`bsft_jax.files.atomic_write` when a partial file must never appear.
    """
    if not is_url(path):
        return open(path, mode, encoding=None if "b" in mode else encoding)
    f = _epath(path).open(mode.replace("t", "").replace("b", "") + "b")
    return f if "b" in mode else io.TextIOWrapper(f, encoding=encoding or "utf-8")


def read_text(path: str | os.PathLike) -> str:
    """The whole file as UTF-8 text."""
    with open_file(path) as f:
        return f.read()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to a URL in one upload (the object appears whole or not at all)."""
    _epath(path).write_bytes(data)


def read_range(f: IO[bytes], start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of an open binary file (one ranged read on an object store)."""
    f.seek(start)
    data = f.read(end - start)
    if len(data) != end - start:
        raise OSError(f"short read: wanted {end - start} bytes at {start}, got {len(data)}")
    return data


def remove(path: str | os.PathLike) -> None:
    """Deletes a file or a folder tree; missing is fine."""
    if is_url(path):
        p = _epath(path)
        if p.is_dir():
            p.rmtree()
        elif p.exists():
            p.unlink()
        return
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def walk_files(path: str | os.PathLike) -> list[str]:
    """Relative paths (``/``-separated) of every file under a folder, sorted."""
    if not is_url(path):
        out = []
        for root, _, files in os.walk(path):
            rel = os.path.relpath(root, path)
            out += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files]
        return sorted(out)
    base = os.fspath(path).split("://", 1)[1].rstrip("/")
    out = []
    for folder, _, files in _epath(path).walk():
        rel = os.fspath(folder).split("://", 1)[-1].rstrip("/")[len(base):].strip("/")
        out += [f"{rel}/{f}" if rel else f for f in files]
    return sorted(out)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies one file between any two locations; within one object store it is a server-side copy."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_url(src) and not is_url(dst):
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        shutil.copyfile(src, dst)
        return
    if is_url(src) and is_url(dst) and src.split("://")[0] == dst.split("://")[0]:
        import fsspec

        _configure_fsspec()
        fs, _ = fsspec.core.url_to_fs(src)
        fs.copy(src, dst)  # no bytes through this host
        return
    makedirs(dirname(dst))
    with open_file(src, "rb") as fin, open_file(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 16 << 20)


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Moves a file or folder ``src`` to ``dst`` (which must not exist).

    Locally one ``os.rename``. An object store has no rename: every object under ``src`` is copied
    server-side to ``dst``, then ``src`` is deleted. Not atomic there: a crash in between leaves
    both (``src`` complete until the delete starts), never neither.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_url(src) and not is_url(dst):
        os.rename(src, dst)
        return
    if isfile(src):
        copy_file(src, dst)
    else:
        for rel in walk_files(src):
            copy_file(join(src, rel), join(dst, rel))
    remove(src)


def upload_dir(local: str, url: str) -> None:
    """Copies every file of the local folder ``local`` under the URL prefix ``url``."""
    for rel in walk_files(local):
        copy_file(os.path.join(local, rel), join(url, rel))


@contextlib.contextmanager
def local_copy(path: str | os.PathLike, *, skip_suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> Iterator[str]:
    """``with local_copy(path) as folder:`` a local folder with ``path``'s files (weights skipped).

    A local ``path`` is yielded as it is; a URL's small files are downloaded to a temporary folder
    that is removed afterwards (for loaders that only read local folders, e.g. tokenizers).
    """
    path = os.fspath(path)
    if not is_url(path):
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="bsft_remote_")
    try:
        for rel in walk_files(path):
            if not rel.endswith(skip_suffixes):
                copy_file(join(path, rel), os.path.join(tmp, *rel.split("/")))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def temp_sibling(path: str, tag: str = "partial") -> str:
    """A fresh sibling name for staging ``path``: ``<parent>/.<name>.<tag>-<random>``."""
    name = f".{basename(path)}.{tag}-{uuid.uuid4().hex[:12]}"
    if is_url(path):
        return join(dirname(path), name)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=name, dir=parent)


def commit_dir(tmp: str, final: str) -> None:
    """Makes the finished staging prefix ``tmp`` appear at ``final`` on an object store.

    An object store cannot rename a prefix. So: an existing ``final`` first loses its
    ``config.json`` (no reader takes it for a complete folder from then on), every other file is
    copied server-side, ``config.json`` is copied last, files the new folder does not have are
    deleted, and the staging prefix is removed. A reader never finds a ``config.json`` beside
    files of another (or an unfinished) export. A PEFT adapter's ``adapter_config.json`` is handled
    the same way (:data:`COMMIT_LAST`).
    """
    files = walk_files(tmp)
    old = set(walk_files(final)) if isdir(final) else set()
    for name in COMMIT_LAST:
        if name in old:
            remove(join(final, name))
    ordered = [f for f in files if f not in COMMIT_LAST] + [f for f in files if f in COMMIT_LAST]
    for rel in ordered:
        copy_file(join(tmp, rel), join(final, rel))
    for rel in sorted(old - set(files)):
        remove(join(final, rel))
    remove(tmp)


class AppendLog:
    """A line-appended text file (``metrics.jsonl``) on local disk or an object store.

    Locally: an ordinary file opened for append, line-buffered. On a URL (objects cannot be
    appended to): the existing lines are read once, new lines are kept in memory, and the whole
    object is re-uploaded at most every ``upload_every`` seconds, on :meth:`flush` and on
    :meth:`close`. A crash loses at most the last ``upload_every`` seconds of lines.
    """

    def __init__(self, path: str, *, upload_every: float = 30.0):
        self.path = path
        self.remote = is_url(path)
        self.upload_every = upload_every
        if self.remote:
            self._buf = io.StringIO()
            if isfile(path):
                self._buf.write(read_text(path))
            self._last_upload = time.monotonic()
            self._dirty = False
            self._file = None
        else:
            self._file = open(path, "a", buffering=1)

    def write(self, text: str) -> None:
        """Appends ``text``."""
        if not self.remote:
            self._file.write(text)
            return
        self._buf.write(text)
        self._dirty = True
        if time.monotonic() - self._last_upload >= self.upload_every:
            self.flush()

    def flush(self) -> None:
        """Makes everything written so far visible at ``path``."""
        if not self.remote:
            self._file.flush()
        elif self._dirty:
            write_bytes(self.path, self._buf.getvalue().encode("utf-8"))
            self._dirty = False
            self._last_upload = time.monotonic()

    def close(self) -> None:
        """Flushes and closes."""
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
