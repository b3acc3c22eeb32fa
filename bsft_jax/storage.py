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

Transient bucket faults (429, 5xx, timeouts, dropped connections) are retried at two levels:

* every HTTP request, by the client library: gcsfs (what ``etils.epath`` uses here) retries a request
  6 times with exponential backoff and jitter (about 30 s in all, fixed by gcsfs); tensorstore (Orbax's
  checkpoint arrays) 32 times, 1 s doubling to 32 s (about 15 min); google-cloud-storage (the lease,
  TensorBoard) for up to 120 s when the request is idempotent;
* every whole-object operation on a URL here (an upload, a download, a ranged read, a copy, a listing),
  by :func:`retry`: exponential backoff with full jitter for up to ``BSFT_STORAGE_RETRY_SECONDS``
  (default 120 s) in all, so a bucket that keeps failing for minutes is ridden out too.

What still fails raises :class:`StorageError`: one line naming the path, the attempts and the last
error (a :class:`~bsft_jax.errors.UserError`: the CLIs print it and exit 2). Setting
``BSFT_STORAGE_RETRY_SECONDS`` also bounds tensorstore's retries of checkpoint arrays
(:func:`tensorstore_retry_context`); unset, tensorstore keeps its own.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import io
import logging
import os
import posixpath
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

from bsft_jax.errors import UserError, one_line

log = logging.getLogger(__name__)
T = TypeVar("T")

# Weight files are never downloaded by local_copy: they are streamed (safetensors) or not used.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".gguf", ".ckpt")
# Written last when a folder is committed: the file an HF (or PEFT adapter) reader opens first.
COMMIT_LAST = ("config.json", "adapter_config.json")


# ----------------------------------------------------------------------------- transient faults
RETRY_SECONDS_ENV = "BSFT_STORAGE_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 120.0
TRANSIENT_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Exception classes (by name, so that no client library needs importing) that mean "the connection failed,
# try again": aiohttp (gcsfs), requests / urllib3 (google-cloud-storage), google-auth.
_TRANSIENT_NAMES = frozenset({"ClientConnectionError", "ClientPayloadError", "ServerTimeoutError",
                              "ServerDisconnectedError", "ChunkedEncodingError", "ProxyError", "ReadTimeout",
                              "ConnectTimeout", "Timeout", "ProtocolError", "TransportError", "RetryError"})
# tensorstore reports a failed request as a ValueError whose message starts with its status name.
_TRANSIENT_STATUS_TEXT = ("UNAVAILABLE:", "DEADLINE_EXCEEDED:", "ABORTED:")


class StorageError(UserError, OSError):
    """A bucket (or disk) operation kept failing after its retries; the message names the path."""


def retry_seconds() -> float:
    """How long :func:`retry` keeps trying one operation: ``$BSFT_STORAGE_RETRY_SECONDS`` or 120 s."""
    try:
        return max(float(os.environ.get(RETRY_SECONDS_ENV) or DEFAULT_RETRY_SECONDS), 0.0)
    except ValueError:
        value = os.environ[RETRY_SECONDS_ENV]
        raise StorageError(f"{RETRY_SECONDS_ENV}={value!r} is not a number of seconds") from None


def is_transient(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it was raised from) is a fault worth retrying: an HTTP 408/429/5xx,
    a timeout, a reset or dropped connection. A missing object, a denied permission or a full disk is not."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, StorageError):  # retried already: retrying it again would multiply the bound
            return False
        if isinstance(e, ConnectionError | TimeoutError | http.client.HTTPException):
            return True
        if any(c.__name__ in _TRANSIENT_NAMES for c in type(e).__mro__):
            return True
        for attr in ("code", "status", "status_code"):
            value = getattr(e, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value in TRANSIENT_HTTP_STATUS:
                return True
        if isinstance(e, ValueError) and str(e).startswith(_TRANSIENT_STATUS_TEXT):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def retry(fn: Callable[[], T], what: str, *, seconds: float | None = None, first_delay: float = 0.5,
          max_delay: float = 16.0) -> T:
    """``fn()``, retried after transient faults (:func:`is_transient`) with exponential backoff and full jitter.

    ``what`` names the operation and path for the log and the error (``"upload gs://b/run/metrics.jsonl"``).
    Tries until ``seconds`` (default :func:`retry_seconds`) have passed since the first attempt, then raises
    :class:`StorageError`; an error that is not transient is raised at once, unchanged.
    """
    budget = retry_seconds() if seconds is None else seconds
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            elapsed = time.monotonic() - start
            delay = random.uniform(0.0, min(max_delay, first_delay * 2 ** min(attempt - 1, 30)))
            if elapsed + delay > budget:
                raise StorageError(f"{what}: failed {attempt} time(s) over {elapsed:.0f} s with transient errors, "
                                   f"giving up ({RETRY_SECONDS_ENV}={budget:g}); last error: "
                                   f"{type(e).__name__}: {one_line(e)[:300]}") from e
            log.warning("%s: %s: %s; retrying in %.1f s (attempt %d)", what, type(e).__name__, one_line(e)[:200],
                        delay, attempt + 1)
            time.sleep(delay)


def tensorstore_retry_context() -> dict[str, Any] | None:
    """tensorstore's ``gcs_request_retries`` bounded like :func:`retry` when ``$BSFT_STORAGE_RETRY_SECONDS``
    is set (its delays double from 1 s up to 32 s; enough retries to fill the budget), else None."""
    if not os.environ.get(RETRY_SECONDS_ENV):
        return None
    budget, retries, total, delay = retry_seconds(), 0, 0.0, 1.0
    while total + delay <= budget:
        total, retries, delay = total + delay, retries + 1, min(delay * 2, 32.0)
    return {"max_retries": retries, "initial_delay": "1s", "max_delay": "32s"}


def is_url(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` paths (gs://, s3://, ...), False for local ones."""
    return "://" in os.fspath(path)


def _epath(path: str | os.PathLike) -> Any:
    _configure_fsspec()
    from etils import epath  # import-time cost: only for gs:// (and other URL) paths; import bsft_jax stays light

    return epath.Path(os.fspath(path))


_CONFIGURED = False


def _configure_fsspec() -> None:
    """Turns off gcsfs's listing cache: other hosts and Orbax's tensorstore writes change the bucket."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    import fsspec  # as etils above: only URLs need it

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
    return retry(lambda: _epath(path).exists(), f"look up {path}") if is_url(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder (for URLs: a prefix holding objects)."""
    return retry(lambda: _epath(path).is_dir(), f"look up {path}") if is_url(path) else os.path.isdir(path)


def isfile(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file (for URLs: an object)."""
    return retry(lambda: _epath(path).is_file(), f"look up {path}") if is_url(path) else os.path.isfile(path)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names in a folder (not full paths), like ``os.listdir``."""
    if not is_url(path):
        return os.listdir(path)
    return retry(lambda: [p.name for p in _epath(path).iterdir()], f"list {path}")


def makedirs(path: str | os.PathLike) -> None:
    """``os.makedirs(path, exist_ok=True)``; nothing to do on an object store (prefixes are implicit)."""
    if is_url(path):
        return
    os.makedirs(path, exist_ok=True)


def size(path: str | os.PathLike) -> int:
    """File size in bytes."""
    return int(retry(lambda: _epath(path).stat().length, f"look up {path}")) if is_url(path) else os.path.getsize(path)


def open_file(path: str | os.PathLike, mode: str = "r", encoding: str | None = "utf-8") -> IO[Any]:
    """``open(path, mode)``; for URLs a streaming file object (reads are ranged, writes upload on close).

    A URL opened for writing uploads even when the ``with`` block fails: use :func:`write_bytes` /
    :func:`bsft_jax.files.atomic_write` when a partial file must never appear.
    """
    if not is_url(path):
        return open(path, mode, encoding=None if "b" in mode else encoding)
    raw = mode.replace("t", "").replace("b", "") + "b"
    f = retry(lambda: _epath(path).open(raw), f"open {path}") if "r" in raw else _epath(path).open(raw)
    return f if "b" in mode else io.TextIOWrapper(f, encoding=encoding or "utf-8")


def read_text(path: str | os.PathLike) -> str:
    """The whole file as UTF-8 text."""
    if is_url(path):
        data = retry(lambda: _epath(path).read_bytes(), f"download {path}")
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()  # newlines as open() reads them
    with open_file(path) as f:
        return f.read()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to a URL in one upload (the object appears whole or not at all), retried (:func:`retry`)."""
    retry(lambda: _epath(path).write_bytes(data), f"upload {path}")


def read_range(f: IO[bytes], start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of an open binary file (one ranged read on an object store, retried)."""

    def read() -> bytes:
        f.seek(start)
        return f.read(end - start)

    data = retry(read, f"read bytes {start}-{end} of {getattr(f, 'path', getattr(f, 'name', 'a file'))}")
    if len(data) != end - start:
        raise OSError(f"short read: wanted {end - start} bytes at {start}, got {len(data)}")
    return data


def remove(path: str | os.PathLike) -> None:
    """Deletes a file or a folder tree; missing is fine."""
    if is_url(path):
        def rm() -> None:
            p = _epath(path)
            if p.is_dir():
                p.rmtree()
            elif p.exists():
                p.unlink()

        retry(rm, f"delete {path}")
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

    def walk() -> list[str]:
        out = []
        for folder, _, files in _epath(path).walk():
            rel = os.fspath(folder).split("://", 1)[-1].rstrip("/")[len(base):].strip("/")
            out += [f"{rel}/{f}" if rel else f for f in files]
        return sorted(out)

    return retry(walk, f"list {path}")


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies one file between any two locations; within one object store it is a server-side copy."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_url(src) and not is_url(dst):
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        shutil.copyfile(src, dst)
        return
    if is_url(src) and is_url(dst) and src.split("://")[0] == dst.split("://")[0]:
        import fsspec  # as in _configure_fsspec

        _configure_fsspec()
        fs, _ = fsspec.core.url_to_fs(src)
        retry(lambda: fs.copy(src, dst), f"copy {src} to {dst}")  # no bytes through this host
        return
    makedirs(dirname(dst))

    def copy() -> None:  # a failed upload leaves no object (it appears on close): the whole copy is retried
        with open_file(src, "rb") as fin, open_file(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 << 20)

    retry(copy, f"copy {src} to {dst}")


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

    Locally: each write is appended with one ``os.write``. On a URL (objects cannot be
    appended to): the existing lines are read once, new lines are kept in memory, and the whole
    object is re-uploaded at most every ``upload_every`` seconds, on :meth:`flush` and on
    :meth:`close`. A crash loses at most the last ``upload_every`` seconds of lines.

    Storage trouble does not stop the caller mid-run, and loses nothing that can still be written:
    a periodic upload that fails is logged and left to the next one (every upload carries every line,
    and the training loop is not held up retrying); locally, a full disk keeps the lines in memory
    (the file never ends in half a line) and writes them when space frees. :meth:`flush` and
    :meth:`close` try for the whole bound (:func:`retry`) and raise :class:`StorageError` if the lines
    still cannot be written.
    """

    def __init__(self, path: str, *, upload_every: float = 30.0):
        self.path = path
        self.remote = is_url(path)
        self.upload_every = upload_every
        self._fd: int | None = None
        if self.remote:
            self._buf = io.StringIO()
            if isfile(path):
                self._buf.write(read_text(path))
            self._last_upload = time.monotonic()
            self._dirty = False
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._unwritten = b""  # lines a full disk did not take yet

    def write(self, text: str) -> None:
        """Appends ``text``."""
        if not self.remote:
            self._unwritten += text.encode("utf-8")
            self._write_local(quiet=True)
            return
        self._buf.write(text)
        self._dirty = True
        if time.monotonic() - self._last_upload >= self.upload_every:
            try:
                self._upload(seconds=0.0)  # one try (the client library retries each request)
            except StorageError as e:
                self._last_upload = time.monotonic()  # the next periodic upload carries these lines too
                log.warning("%s; the lines are kept and uploaded with the next ones", e)

    def _write_local(self, *, quiet: bool) -> None:
        if not self._unwritten:
            return
        size = os.fstat(self._fd).st_size
        try:
            done = 0
            while done < len(self._unwritten):
                done += os.write(self._fd, self._unwritten[done:])
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            os.ftruncate(self._fd, size)  # no half line: the whole batch goes in once there is room
            lines = self._unwritten.count(b"\n")
            if not quiet:
                raise StorageError(f"{self.path}: no space left on its device; {lines} line(s) could not be "
                                   "written") from e
            if lines == 1 or lines % 100 == 0:
                log.warning("%s: no space left on its device; %d line(s) kept in memory until there is room",
                            self.path, lines)
            return
        self._unwritten = b""

    def flush(self) -> None:
        """Makes everything written so far visible at ``path``."""
        if not self.remote:
            self._write_local(quiet=False)
        elif self._dirty:
            self._upload()

    def _upload(self, seconds: float | None = None) -> None:
        data = self._buf.getvalue().encode("utf-8")
        retry(lambda: _epath(self.path).write_bytes(data), f"upload {self.path}", seconds=seconds)
        self._dirty = False
        self._last_upload = time.monotonic()

    def close(self) -> None:
        """Flushes and closes."""
        try:
            self.flush()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
