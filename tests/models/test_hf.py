"""HF weight I/O: round trips through transformers, sharded files, clear errors, streaming memory."""

import json
import os
import tracemalloc

import jax.numpy as jnp
import numpy as np
import pytest

from bsft_jax import WeightLoadError, load_hf, save_hf
from bsft_jax.models import safetensors_io
from bsft_jax.models.config import UnsupportedConfigError
from bsft_jax.models.hf import expected_hf_keys
from tests.helpers import padded_batch, save_tiny, torch_logits


def _hf_class(kind):
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    return Qwen2ForCausalLM if kind == "qwen2" else LlamaForCausalLM


@pytest.mark.parametrize("kind, tie", [("qwen2", True), ("qwen2", False), ("llama", False), ("llama", True)])
def test_round_trip_through_transformers(tmp_path, kind, tie):
    folder, ref = save_tiny(tmp_path, kind, tie=tie)
    ids, mask, pos = padded_batch()
    expected = torch_logits(ref, ids, mask, pos)
    model, config = load_hf(folder)
    out = save_hf(model, config, tmp_path / "exported", max_shard_size=40_000)  # force several shards
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(files) > 1 and all(f.startswith("model-") for f in files)
    index = json.loads(open(os.path.join(out, "model.safetensors.index.json")).read())
    assert set(index["weight_map"]) == set(expected_hf_keys(config))
    hf_config = json.loads(open(os.path.join(out, "config.json")).read())
    assert hf_config["vocab_size"] == 256 and hf_config["tie_word_embeddings"] == tie
    assert ("lm_head.weight" in index["weight_map"]) == (not tie)
    gen = json.loads(open(os.path.join(out, "generation_config.json")).read())
    assert gen["eos_token_id"] == ([255, 253] if kind == "llama" else 255)

    reloaded = _hf_class(kind).from_pretrained(out).eval()
    real = mask.astype(bool)
    assert np.abs(torch_logits(reloaded, ids, mask, pos) - expected)[real].max() <= 1e-5
    # and our own loader reads the sharded folder back
    model2, config2 = load_hf(out)
    assert config2 == config
    got = np.asarray(model2(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert np.abs(got - expected)[real].max() <= 1e-4


def test_bf16_source_loads_as_fp32_and_saves_as_bf16(tmp_path):
    import torch

    folder, ref = save_tiny(tmp_path, "qwen2", dtype=torch.bfloat16)
    model, config = load_hf(folder, dtype="float32")
    assert config.source_dtype == "bfloat16" and model.embed.value.dtype == jnp.float32
    out = save_hf(model, config, tmp_path / "out")
    header, _, _ = safetensors_io.read_header(os.path.join(out, "model-00001-of-00001.safetensors"))
    assert {t.dtype for t in header.values()} == {"BF16"}
    # bf16 -> fp32 -> bf16 is exact
    src = dict(safetensors_io.iter_tensors(os.path.join(folder, "model.safetensors")))
    back = dict(safetensors_io.iter_tensors(os.path.join(out, "model-00001-of-00001.safetensors")))
    for k, v in src.items():
        np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(v), err_msg=k)


def test_refuses_non_empty_folder_and_writes_atomically(tmp_path, monkeypatch):
    folder, _ = save_tiny(tmp_path, "llama")
    model, config = load_hf(folder)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_hf(model, config, folder)

    # A crash half-way leaves neither the destination nor a temporary folder behind.
    calls = {"n": 0}
    original = safetensors_io.write_file

    def failing(path, tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return original(path, tensors, metadata)

    monkeypatch.setattr(safetensors_io, "write_file", failing)
    dest = tmp_path / "export"
    with pytest.raises(OSError, match="disk full"):
        save_hf(model, config, dest, max_shard_size=40_000)
    assert not dest.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".export")]


def test_no_weights_is_a_clear_error(tmp_path):
    folder, _ = save_tiny(tmp_path, "qwen2")
    os.remove(os.path.join(folder, "model.safetensors"))
    with pytest.raises(WeightLoadError, match="no weights"):
        load_hf(folder)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_hf(tmp_path / "nope")


def _rewrite(folder, mutate):
    path = os.path.join(folder, "model.safetensors")
    tensors = {k: np.array(v) for k, v in safetensors_io.iter_tensors(path)}
    mutate(tensors)
    pending = [safetensors_io.PendingTensor(k, v.shape, v.dtype, lambda v=v: v) for k, v in tensors.items()]
    safetensors_io.write_file(path, pending)


def test_wrong_shape_missing_and_unexpected_tensors_are_named(tmp_path):
    folder, _ = save_tiny(tmp_path, "qwen2")
    key = "model.layers.1.self_attn.k_proj.weight"
    _rewrite(folder, lambda t: t.__setitem__(key, t[key][:-1]))
    with pytest.raises(WeightLoadError, match=r"k_proj\.weight.*shape \(31, 64\), expected \(32, 64\)"):
        load_hf(folder)

    folder, _ = save_tiny(tmp_path / "b", "qwen2")
    _rewrite(folder, lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
    with pytest.raises(WeightLoadError, match=r"missing tensor.*layers\.0\.mlp\.up_proj\.weight"):
        load_hf(folder)

    folder, _ = save_tiny(tmp_path / "c", "qwen2")
    _rewrite(folder, lambda t: t.__setitem__("model.layers.0.self_attn.extra.weight", np.zeros(3, np.float32)))
    with pytest.raises(WeightLoadError, match=r"unexpected tensor 'model\.layers\.0\.self_attn\.extra\.weight'"):
        load_hf(folder)


def test_unsupported_config_is_refused_before_loading(tmp_path):
    folder, _ = save_tiny(tmp_path, "qwen2")
    cfg_path = os.path.join(folder, "config.json")
    cfg = json.loads(open(cfg_path).read())
    cfg["use_sliding_window"] = True
    open(cfg_path, "w").write(json.dumps(cfg))
    with pytest.raises(UnsupportedConfigError, match="use_sliding_window"):
        load_hf(folder)


def test_loading_streams_one_tensor_at_a_time(tmp_path):
    """Host (numpy) allocations while loading stay near one tensor, not the model size.

    tracemalloc sees numpy buffers; the memory-mapped file and device buffers are not host copies.
    """
    folder, _ = save_tiny(tmp_path, "llama", layers=8, vocab=512)
    tensors = dict(safetensors_io.iter_tensors(os.path.join(folder, "model.safetensors")))
    total = sum(v.nbytes for v in tensors.values())
    largest = max(v.nbytes for v in tensors.values())
    assert total > 8 * largest
    load_hf(folder)  # warm-up: compile the placement helpers
    tracemalloc.start()
    load_hf(folder)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 3 * largest + 2_000_000, (peak, largest, total)
