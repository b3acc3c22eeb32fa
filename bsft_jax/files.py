"""Atomic file and folder writes, and the cache folder: the one home (no JAX, so the data schema can use it).

A reader never sees a half-written file or folder: content goes to a temporary sibling first, then
``os.replace`` moves it into place (atomic on POSIX within one file system). On an object store
(``gs://``) a file is buffered and uploaded once (an object appears whole), and a folder is
committed from a staging prefix by :func:`bsft_jax.storage.commit_dir`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from typing import IO, Any

from bsft_jax import storage
from bsft_jax.errors import PathError


def cache_dir() -> str:
    """The one local cache folder (demo set, demo tokenizer, built-in models, TFDS mirrors).

    ``$BSFT_JAX_CACHE`` if set and non-empty, else ``~/.cache/bsft_jax``. ``$BSFT_CACHE`` is a
    deprecated alias (once the built-in models' cache), read only when ``BSFT_JAX_CACHE`` is unset.
    """
    return (os.environ.get("BSFT_JAX_CACHE") or os.environ.get("BSFT_CACHE")
            or os.path.join(os.path.expanduser("~"), ".cache", "bsft_jax"))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """``with atomic_write(path) as f: ...``: ``path`` appears only if the block finishes without error."""
    path = os.fspath(path)
    if storage.is_url(path):
        buf = io.BytesIO() if "b" in mode else io.StringIO()
        yield buf
        data = buf.getvalue()
        storage.write_bytes(path, data if isinstance(data, bytes) else data.encode(encoding or "utf-8"))
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON (plus a newline), written atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def replace_dir(src: str, dst: str) -> None:
    """Moves the finished folder ``src`` to ``dst``; an existing ``dst`` is removed only after the move."""
    if storage.is_url(dst):
        storage.commit_dir(src, dst)
        return
    old = None
    if os.path.exists(dst):
        old = f"{dst}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(path: str) -> Iterator[str]:
    """``with staged_dir(out) as tmp:`` write the folder's files into ``tmp``; ``out`` appears whole (an old
    ``out`` replaced) only when the block finishes, and a failed block leaves neither folder behind.

    ``tmp`` is a hidden sibling of ``out`` (a local folder, or a prefix in the same bucket), moved into
    place by :func:`replace_dir`.
    """
    tmp: str | None = storage.temp_sibling(path)
    try:
        yield tmp
        replace_dir(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            storage.remove(tmp)


def check_writable(path: str | os.PathLike, what: str, *, folder: bool = True) -> None:
    """Raises :class:`bsft_jax.errors.PathError` (naming ``what``, e.g. ``config.run_dir``) unless
    ``path`` can be written: an existing folder (or, ``folder=False``, file) that is writable, or a
    missing one whose nearest existing parent is a writable folder. Creates nothing. ``gs://`` URLs
    are not checked (permissions there are the bucket's, known only at the first write).

    Called before work that would end in the write (a training run, a decode, a compile), so a
    read-only folder or a file in the way is one line at the start instead of a traceback at the end.
    """
    path = os.fspath(path)
    if not path or storage.is_url(path):
        return
    path = os.path.abspath(path)
    kind = "folder" if folder else "file"
    if os.path.exists(path):
        if os.path.isdir(path) != folder:
            raise PathError(f"{what}: {path!r} is a {'file' if folder else 'folder'}, not a {kind}; "
                            f"give a {kind} path")
        target = path
    else:
        target = os.path.dirname(path)
        while not os.path.exists(target):
            target = os.path.dirname(target)
        if not os.path.isdir(target):
            raise PathError(f"{what}: {target!r} is a file, so {path!r} cannot be created under it; "
                            f"give another {kind} path")
    mode = os.W_OK | (os.X_OK if os.path.isdir(target) else 0)
    if not os.access(target, mode):
        raise PathError(f"{what}: {target!r} is not writable (permission denied); choose a {kind} path you can "
                        "write to, or change its permissions")
