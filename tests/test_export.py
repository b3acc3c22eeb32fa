"""``python -m bsft_jax.export``: what the trainer writes becomes an HF folder transformers runs identically.

Tolerances: logits fp32, max abs diff <= 1e-4 against transformers (seen ~1e-6). Exports of the
same weights (8-device vs 1-device checkpoint) are compared byte for byte; a bf16 export is
compared bitwise with the fp32 export rounded by ml_dtypes (round to nearest even).

Greedy generation (``bsft_jax.generate``, KV cache, vs transformers ``generate(do_sample=False)``):
a demo model trained a few steps does not yet put a behavior token first on its own, so both
sides take the behavior token with the highest logit as the first token (the evaluator's
constrained first-token decoding) and then decode freely; the tokens, the behavior token and the
text must agree. A nearly random tiny model is also decoded unconstrained (varied tokens).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx

from bsft_jax.checkpoint.layout import CheckpointError, decoder_config_from_dict
from bsft_jax.checkpoint.manager import Checkpointer
from bsft_jax.checkpoint.read import load_params, read_meta
from bsft_jax.decode.sampler import generate
from bsft_jax.export import ExportError, export_checkpoint
from bsft_jax.models.safetensors_io import iter_tensors
from bsft_jax.models.sharding import make_mesh
from bsft_jax.setup.config import config_to_dict, default_config, load_config_file
from bsft_jax.train.loop import run
from bsft_jax.train.optim import make_optimizer
from bsft_jax.train.step import Trainer

from .helpers import save_tiny
from .train.common import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_NEW = 12


def _one():
    return jax.devices()[:1]


def _set(cfg, **overrides):
    for key, value in overrides.items():
        section, field = key.split(".")
        cfg[section][field] = value
    return cfg


def _tensors(folder: str) -> dict[str, np.ndarray]:
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            out.update({k: np.array(v) for k, v in iter_tensors(os.path.join(folder, name))})
    return out


def _json(path: str):
    with open(path) as f:
        return json.load(f)


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    return subprocess.run([sys.executable, "-m", "bsft_jax.export", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    """The demo config trained 4 steps (1 device), exported in fp32 into several 1 MB shards."""
    tmp = tmp_path_factory.mktemp("demo")
    cfg = load_config_file(os.path.join(ROOT, "configs", "demo_scratch.py"), "demo_scratch.py")
    cfg.run_dir = str(tmp / "run")
    _set(cfg, **{"train.steps": 4, "train.global_batch_size": 8, "data.seq_len": 128, "train.eval_every": -1,
                 "checkpoint.every_steps": 4, "optimizer.warmup_steps": 2, "logging.tensorboard": False,
                 "mesh.fsdp": 1})
    run(cfg, devices=_one())
    hf_dir = export_checkpoint(cfg.run_dir, str(tmp / "hf"), dtype="float32", max_shard_size="1MB")
    return cfg.run_dir, hf_dir


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """A tiny synthetic run trained on 8 devices, mesh data=2 fsdp=2 tensor=2, checkpoint at step 2."""
    tmp = tmp_path_factory.mktemp("sharded")
    cfg = tiny_config(str(tmp / "run"), str(tmp / "tok"), **{
        "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "train.steps": 2, "checkpoint.every_steps": 2})
    run(cfg)
    return cfg


def _hf_model(hf_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True).eval()


def _hf_tokenizer(hf_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)


def _demo_prompts(tokenizer, n: int = 3) -> list[list[int]]:
    from bsft_jax.data import load_demo, render_prompt
    from bsft_jax.setup.settings import Settings

    # the demo config's behavior tokens (not BehaviorSpec's defaults): the ones the export's tokenizer has
    demo_cfg = load_config_file(os.path.join(ROOT, "configs", "demo_scratch.py"), "demo_scratch.py")
    spec = Settings.from_config(demo_cfg).behavior.spec
    records = load_demo(["test"], spec=spec)["test"][:n]
    return [list(render_prompt(r, tokenizer, spec=spec)) for r in records]


# ----------------------------------------------------------------------------- parity
def test_exported_demo_model_logits_equal_bsft_jax(demo_export):
    run_dir, hf_dir = demo_export
    model, config, _ = load_params(run_dir, dtype="float32")
    hf = _hf_model(hf_dir)
    tok = _hf_tokenizer(hf_dir)
    for ids in _demo_prompts(tok):
        ours = np.asarray(model(jnp.asarray([ids])))
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits.float().numpy()
        assert ours.shape == theirs.shape == (1, len(ids), config.vocab_size)
        assert np.max(np.abs(ours - theirs)) <= 1e-4


def _greedy_bsft(model, config, prompts: list[list[int]], behavior_ids: list[int] | None) -> list[list[int]]:
    """bsft_jax.generate, greedy; with ``behavior_ids`` the first token is the best behavior token."""
    force = None
    if behavior_ids is not None:
        force = []
        for prompt in prompts:
            logits_v = np.asarray(model(jnp.asarray([prompt]))[0, -1])
            force.append(behavior_ids[int(np.argmax(logits_v[behavior_ids]))])
    return generate(model, prompts, max_new_tokens=MAX_NEW, eos_ids=config.stop_token_ids, force_first_token=force)


def _greedy_hf(hf, prompt: list[int], behavior_ids: list[int]) -> list[int]:
    with torch.no_grad():
        first_logits = hf(torch.tensor([prompt])).logits[0, -1]
        first = behavior_ids[int(torch.argmax(first_logits[behavior_ids]))]
        ids = torch.tensor([[*prompt, first]])
        gen = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_NEW - 1)
    return [first, *gen[0, ids.shape[1]:].tolist()]


def test_greedy_generation_matches_transformers(demo_export):
    run_dir, hf_dir = demo_export
    model, config, meta = load_params(run_dir, dtype="float32")
    behavior_ids = [meta["behavior"]["token_ids"][n] for n in meta["behavior"]["names"]]
    hf, tok = _hf_model(hf_dir), _hf_tokenizer(hf_dir)
    run_tok = _hf_tokenizer(os.path.join(run_dir, "tokenizer"))
    prompts = _demo_prompts(tok)
    for prompt, ours in zip(prompts, _greedy_bsft(model, config, prompts, behavior_ids), strict=True):
        theirs = _greedy_hf(hf, prompt, behavior_ids)
        assert ours == theirs
        assert ours[0] in behavior_ids
        assert tok.decode(theirs) == run_tok.decode(ours)
        assert tok.decode(theirs[:1]) == meta["behavior"]["token_format"].format(
            name=meta["behavior"]["names"][behavior_ids.index(ours[0])])


def test_unconstrained_greedy_of_a_sharded_run_matches_transformers(sharded_run, tmp_path):
    # The tiny model is nearly random: its greedy continuations vary token by token (a stronger check of
    # positions and the KV cache than the few-step demo model, which repeats one token). HF does not mask
    # the padding rows; they start as the mean row, whose logit is the mean logit, so they should not win.
    hf_dir = export_checkpoint(sharded_run.run_dir, str(tmp_path / "hf"))
    model, config, _ = load_params(sharded_run.run_dir)
    hf = _hf_model(hf_dir)
    rng = np.random.RandomState(0)
    # BOS, words, SEP (the synthetic copy task); ragged lengths: generate left-pads them in one batch
    prompts = [[1, *rng.randint(4, 60, n).tolist(), 2] for n in (6, 3, 9)]
    seen = set()
    for prompt, ours in zip(prompts, _greedy_bsft(model, config, prompts, None), strict=True):
        with torch.no_grad():
            ids = torch.tensor([prompt])
            theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=MAX_NEW)[0, len(prompt):].tolist()
        assert ours == theirs
        seen.update(ours)
    assert len(seen) >= 4  # the comparison is not between two constant sequences


def test_exported_folder_has_what_servers_need(demo_export):
    run_dir, hf_dir = demo_export
    meta = read_meta(run_dir)
    mc = meta["model_config"]
    files = sorted(os.listdir(hf_dir))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1  # max_shard_size="1MB" on a ~4 MB model
    index = _json(os.path.join(hf_dir, "model.safetensors.index.json"))
    assert sorted(set(index["weight_map"].values())) == shards
    assert set(index["weight_map"]) == set(_tensors(hf_dir))

    cfg = _json(os.path.join(hf_dir, "config.json"))
    assert cfg["vocab_size"] == mc["vocab_size"] > mc["valid_vocab_size"]  # grown and padded to 128
    assert cfg["tie_word_embeddings"] is mc["tie_word_embeddings"] is True
    assert "lm_head.weight" not in index["weight_map"]

    gen = _json(os.path.join(hf_dir, "generation_config.json"))
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert eos == meta["stop_token_ids"] and eos

    tok = _hf_tokenizer(hf_dir)
    assert len(tok) == mc["valid_vocab_size"]
    for name, tid in meta["behavior"]["token_ids"].items():
        token = meta["behavior"]["token_format"].format(name=name)
        assert tok.convert_tokens_to_ids(token) == tid
        assert tok.encode(f"x{token}y", add_special_tokens=False).count(tid) == 1
        assert tok.encode(token, add_special_tokens=False) == [tid]
        assert token in tok.all_special_tokens

    run_template = _hf_tokenizer(os.path.join(run_dir, "tokenizer")).chat_template
    with open(os.path.join(hf_dir, "chat_template.jinja")) as f:
        assert f.read() == run_template
    assert _json(os.path.join(hf_dir, "tokenizer_config.json"))["chat_template"] == run_template
    assert tok.chat_template == run_template and "<|im_start|>" in run_template


def test_hf_sourced_run_keeps_source_eos_ids_spare_rows_and_dtypes(tmp_path):
    hf_src, _ = save_tiny(tmp_path, "llama")  # vocab 256, eos [255, 253], untied, llama3 rope scaling
    src_gen = _json(os.path.join(hf_src, "generation_config.json"))
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "tok"), **{
        "model.source": "hf", "model.hf_path": hf_src, "train.steps": 2, "checkpoint.every_steps": 2})
    run(cfg, devices=_one())
    out32 = export_checkpoint(cfg.run_dir, str(tmp_path / "hf32"))  # default dtype: the source's (float32)
    out16 = export_checkpoint(cfg.run_dir, str(tmp_path / "hf16"), dtype="bfloat16")

    gen = _json(os.path.join(out32, "generation_config.json"))
    assert gen["eos_token_id"] == src_gen["eos_token_id"] == [255, 253]
    conf = _json(os.path.join(out32, "config.json"))
    assert conf["vocab_size"] == 256  # 63 tokens + 3 behavior tokens fit in the spare rows
    assert conf["tie_word_embeddings"] is False and conf["dtype"] == "float32"
    assert _json(os.path.join(out16, "config.json"))["dtype"] == "bfloat16"

    model, _, _ = load_params(cfg.run_dir, dtype="float32")
    ids = np.random.RandomState(0).randint(0, 66, (2, 16))
    with torch.no_grad():
        theirs = _hf_model(out32)(torch.tensor(ids)).logits.numpy()
    assert np.max(np.abs(np.asarray(model(jnp.asarray(ids))) - theirs)) <= 1e-4

    # bf16 export (restored from the fp32 checkpoint directly as bf16) == fp32 export rounded by numpy
    t32, t16 = _tensors(out32), _tensors(out16)
    assert set(t32) == set(t16)
    for k in t32:
        assert t16[k].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(t16[k], t32[k].astype(ml_dtypes.bfloat16), err_msg=k)


# ----------------------------------------------------------------------------- sharded == single device
def test_export_from_8_device_checkpoint_equals_1_device_checkpoint(sharded_run, tmp_path):
    meta = read_meta(sharded_run.run_dir)
    assert meta["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    # Re-save the same train state from a 1-device mesh into a second run directory.
    one_dir = str(tmp_path / "one")
    config = decoder_config_from_dict(meta["model_config"])
    tx, schedule = make_optimizer(default_config().optimizer, 10)
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, _one())
    with jax.set_mesh(mesh):
        trainer = Trainer(config, tx, schedule, mesh)
        src = Checkpointer(sharded_run.run_dir)
        state = src.restore(meta["step"], trainer.abstract_with_shardings())
        src.close()
        assert len(state.params["embed"].get_value().sharding.device_set) == 1
        dst = Checkpointer(one_dir, async_save=False)
        dst.save(meta["step"], state, data_iterator=None, config=config_to_dict(sharded_run),
                 meta=dict(meta, mesh={"data": 1, "fsdp": 1, "tensor": 1}))
        dst.close()
    shutil.copytree(os.path.join(sharded_run.run_dir, "tokenizer"), os.path.join(one_dir, "tokenizer"))

    a = export_checkpoint(sharded_run.run_dir, str(tmp_path / "from8"), max_shard_size="16KB")
    b = export_checkpoint(one_dir, str(tmp_path / "from1"), max_shard_size="16KB")
    files = sorted(os.listdir(a))
    assert files == sorted(os.listdir(b)) and sum(f.endswith(".safetensors") for f in files) > 1
    for name in files:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name


# ----------------------------------------------------------------------------- refusals
def _no_run(run_dir):
    shutil.rmtree(run_dir)


def _no_checkpoints(run_dir):
    shutil.rmtree(os.path.join(run_dir, "checkpoints"))


def _unfinished(run_dir):
    ckpt = os.path.join(run_dir, "checkpoints")
    os.rename(os.path.join(ckpt, "2"), os.path.join(ckpt, "2.orbax-checkpoint-tmp-1234"))


def _rm(*parts):
    return lambda run_dir: shutil.rmtree(os.path.join(run_dir, *parts))


def _other_format(run_dir):
    path = os.path.join(run_dir, "checkpoints", "2", "meta", "metadata")
    meta = _json(path)
    meta["format"] = "bsft_jax.train/99"
    with open(path, "w") as f:
        json.dump(meta, f)


def _damaged_params(run_dir):
    params = os.path.join(run_dir, "checkpoints", "2", "params")
    for root, _, names in os.walk(params):
        for n in names:
            if os.sep + "d" in root:  # the array data files (OCDBT), not the metadata
                os.remove(os.path.join(root, n))


@pytest.mark.parametrize("damage, step, error, expected", [
    (_no_run, None, CheckpointError, "no such run directory"),
    (_no_checkpoints, None, CheckpointError, "no checkpoints/ folder"),
    (_unfinished, None, CheckpointError, r"no complete checkpoint step \(only unfinished saves"),
    (_rm("checkpoints", "2", "params"), None, CheckpointError, "partial checkpoint, missing params/"),
    (_rm("checkpoints", "2", "meta"), None, CheckpointError, "partial checkpoint, missing meta/"),
    (_other_format, None, CheckpointError, r"has format 'bsft_jax.train/99', expected 'bsft_jax.train/1'"),
    (None, 7, CheckpointError, r"no complete checkpoint for step 7 \(available: \[2\]\)"),
    (_damaged_params, None, CheckpointError, "params: cannot restore the parameters"),
    (_rm("tokenizer"), None, CheckpointError, "tokenizer folder missing"),
], ids=["no_run", "no_checkpoints", "unfinished", "no_params", "no_meta", "format", "step", "damaged", "no_tok"])
def test_export_refuses_missing_or_partial_checkpoint(sharded_run, tmp_path, damage, step, error, expected):
    run_dir = str(tmp_path / "run")
    shutil.copytree(sharded_run.run_dir, run_dir)
    if damage is not None:
        damage(run_dir)
    out = str(tmp_path / "hf")
    with pytest.raises(error, match=expected) as e:
        export_checkpoint(run_dir, out, step=step)
    assert run_dir in str(e.value)  # names the folder
    assert not os.path.exists(out)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".hf")]  # no temp folder left either


def test_cli_errors_exit_2_without_traceback_and_refuses_non_empty_out(sharded_run, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(sharded_run.run_dir, run_dir)
    shutil.rmtree(os.path.join(run_dir, "checkpoints", "2", "params"))
    r = _cli("--checkpoint", run_dir, "--out", str(tmp_path / "hf"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error:" in r.stderr and "missing params/" in r.stderr and run_dir in r.stderr
    assert "Traceback" not in r.stderr

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_checkpoint(sharded_run.run_dir, str(busy))
    assert (busy / "keep.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- interrupted export
_CRASH = """
import os, sys
import bsft_jax.models.safetensors_io as io
from bsft_jax.export.__main__ import main
real, calls = io.write_file, []
def crashing(path, tensors, metadata=None):
    calls.append(path)
    if len(calls) == 2:  # the second shard: write part of it, then die like a killed process
        with open(path, "wb") as f:
            f.write(b"partial")
        os._exit(9)
    return real(path, tensors, metadata)
io.write_file = crashing
sys.exit(main(sys.argv[1:]))
"""


def test_interrupted_export_leaves_no_folder_that_looks_complete(sharded_run, tmp_path):
    out = str(tmp_path / "hf")
    args = ["--checkpoint", sharded_run.run_dir, "--out", out, "--max_shard_size", "16KB", "--dtype", "float32"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env.pop("JAX_NUM_CPU_DEVICES", None)

    def crash(*extra):
        return subprocess.run([sys.executable, "-c", _CRASH, *args, *extra], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=180)

    r = crash()
    assert r.returncode == 9, r.stderr[-2000:]
    assert not os.path.exists(out)
    partial = [n for n in os.listdir(tmp_path) if n.startswith(".hf.partial-")]
    assert partial  # the killed process could not clean up its temp folder, but it is hidden and incomplete:
    for name in partial:
        left = os.listdir(tmp_path / name)
        assert "config.json" not in left and "model.safetensors.index.json" not in left

    # A complete export through the CLI, then an interrupted --overwrite: the old folder survives intact.
    ok = _cli(*args)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip().splitlines()[-1] == out
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    r = crash("--overwrite")
    assert r.returncode == 9, r.stderr[-2000:]
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before
    assert _hf_model(out).config.vocab_size == read_meta(sharded_run.run_dir)["model_config"]["vocab_size"]


# ----------------------------------------------------------------------------- host memory
_MEASURE = """
import json, sys
import jax, orbax.checkpoint, transformers
from bsft_jax.export import export_checkpoint
from bsft_jax.export.read import read_tokenizer
def status(key):
    with open("/proc/self/status") as f:  # VmHWM: this process's own peak (ru_maxrss includes the parent's)
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
read_tokenizer(sys.argv[3])  # imports and tokenizer first: they are not the model
jax.numpy.zeros(1).block_until_ready()
base = status("VmRSS")
export_checkpoint(sys.argv[1], sys.argv[2], dtype="float32", max_shard_size="100MB")
print(json.dumps({"extra": status("VmHWM") - base}))
"""


def test_export_peak_host_memory_is_the_parameters_plus_about_one_array(tmp_path):
    # ~100M parameters (408 MB fp32) written in the trainer's checkpoint layout (params/meta items as
    # the trainer saves them; the optimizer state is a stand-in: export never reads it).
    import types

    from bsft_jax.checkpoint.layout import make_meta
    from bsft_jax.models import DecoderConfig
    from bsft_jax.models.decoder import count_params, init_decoder

    from .train.common import tiny_tokenizer

    config = DecoderConfig(model_type="qwen2", vocab_size=128, hidden_size=768, intermediate_size=3072, num_layers=12,
                           num_heads=12, num_kv_heads=4, head_dim=64, qkv_bias=True, eos_token_id=61,
                           generation_eos_token_ids=(61,))
    run_dir = str(tmp_path / "run")
    tok = tiny_tokenizer(os.path.join(run_dir, "tokenizer"))
    model = init_decoder(config, 0)
    n = count_params(model)
    state = types.SimpleNamespace(params=nnx.state(model, nnx.Param), opt_state={"count": jnp.zeros((), jnp.int32)},
                                  step=jnp.int32(1), rng=jnp.zeros((2,), jnp.uint32))
    ckpt = Checkpointer(run_dir, async_save=False)
    ckpt.save(1, state, data_iterator=None, config={}, meta=make_meta(
        1, config, behavior={"enabled": False, "names": [], "token_format": "", "token_ids": {}}, num_params=n,
        mesh={"data": 1, "fsdp": 1, "tensor": 1}))
    ckpt.close()
    del model, state

    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    out = subprocess.run([sys.executable, "-c", _MEASURE, run_dir, str(tmp_path / "hf"), tok], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    extra = json.loads(out.stdout.strip().splitlines()[-1])["extra"]
    params = 4 * n
    largest = 4 * config.num_layers * config.hidden_size * config.intermediate_size  # a stacked MLP matrix
    # Seen: params + 1.44 x the largest array (553 MiB). Restoring everything at once into device
    # buffers (checkpoint.load_params) peaked at 720 MiB here and fails this bound.
    assert 0.9 * params < extra < params + 1.5 * largest + 64 * 2**20, (extra / 2**20, params / 2**20)
