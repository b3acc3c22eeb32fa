"""LoRA trainer: frozen base bit-identical, behavior rows and adapters trained, optimizer state for those only;
an FSDP x tensor mesh of 8 fake devices equals one device; microbatches equal one batch.

Tolerances as in test_step_sharded (fp32, one AdamW step at lr 1e-3 moves entries by ~lr).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from bsft_jax.models import DecoderConfig
from bsft_jax.models.decoder import init_decoder
from bsft_jax.models.lora import LoraConfig
from bsft_jax.models.sharding import make_mesh
from bsft_jax.setup.config import default_config
from bsft_jax.train.data import synthetic_dataset
from bsft_jax.train.distributed import DataShard
from bsft_jax.train.lora import LoraTrainer
from bsft_jax.train.optim import make_optimizer

GLOBAL_BATCH, SEQ = 8, 32
ROWS = (120, 121, 122)  # "behavior" token ids (inside valid_vocab_size=124)


def _config(**kw) -> DecoderConfig:
    base = dict(model_type="qwen2", vocab_size=128, valid_vocab_size=124, hidden_size=32, intermediate_size=64,
                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True)
    base.update(kw)
    return DecoderConfig(**base)


def _batches(n: int) -> list[dict[str, np.ndarray]]:
    """Synthetic copy-task batches in which tokens 10, 11, 12 are replaced by the behavior ids."""
    it = iter(synthetic_dataset(7, DataShard(0, 1, GLOBAL_BATCH), SEQ, 100))
    out = []
    for _ in range(n):
        b = dict(next(it))
        for k in ("tokens", "targets"):
            x = b[k].copy()
            for src, dst in zip((10, 11, 12), ROWS):
                x[x == src] = dst
            b[k] = x
        out.append(b)
    return out


def _train(mesh_shape, config, batches, *, lora=None, microbatches=1, devices=None, lr=1e-3, base_dtype=None,
           **loss_options):
    opt = default_config().optimizer
    opt.learning_rate, opt.warmup_steps, opt.eps = lr, 0, 1e-8
    tx, schedule = make_optimizer(opt, 10)
    mesh = make_mesh(mesh_shape, devices)
    lora = lora or LoraConfig(rank=4, alpha=8.0)
    with jax.set_mesh(mesh):
        model = init_decoder(config, seed=3)
        base = jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        trainer = LoraTrainer(config, tx, schedule, mesh, lora=lora, behavior_ids=ROWS, microbatches=microbatches,
                              z_loss=1e-4, base_dtype=base_dtype, **loss_options)
        state = trainer.init_state(model, seed=0)
        trainer.compile(GLOBAL_BATCH, SEQ)
        metrics, first = [], None
        for local in batches:
            batch = {k: jax.device_put(v, trainer.batch_sharding) for k, v in local.items()}
            state, m = trainer.step(state, batch)
            metrics.append(jax.device_get(m))
            if first is None:
                first = jax.device_get(state.params)
        out = dict(metrics=metrics, first=first, last=jax.device_get(state.params), base=base,
                   frozen=jax.device_get(trainer.frozen), opt=state.opt_state, trainer=trainer,
                   full=jax.device_get(nnx.to_pure_dict(nnx.state(trainer.model_from_state(state), nnx.Param))))
    return out


@pytest.mark.parametrize("tie", [False, True])
def test_lora_steps_keep_base_bitwise_and_train_rows_and_adapters(tie):
    config = _config(tie_word_embeddings=tie)
    r = _train({"data": 1, "fsdp": 1, "tensor": 1}, config, _batches(6), devices=jax.devices()[:1], lr=1e-2)
    losses = [float(m["loss"]) for m in r["metrics"]]
    assert losses[-1] < losses[0] - 0.05, losses
    # the frozen base passed to every step is bit-identical to the model we started from
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), r["frozen"], r["base"])
    # the trained model: every base weight bit-identical, except the behavior rows, which moved
    full, base, ids = r["full"], r["base"], np.asarray(ROWS)
    others = np.setdiff1d(np.arange(config.vocab_size), ids)
    np.testing.assert_array_equal(full["embed"][others], base["embed"][others])
    assert np.abs(full["embed"][ids] - base["embed"][ids]).min(axis=1).max() > 0
    assert np.all(np.abs(full["embed"][ids] - base["embed"][ids]).max(axis=1) > 1e-4)  # every row trained
    if not tie:
        np.testing.assert_array_equal(full["lm_head"][:, others], base["lm_head"][:, others])
        assert np.all(np.abs(full["lm_head"][:, ids] - base["lm_head"][:, ids]).max(axis=0) > 1e-4)
    for name in ("q_proj", "o_proj", "k_bias"):
        np.testing.assert_array_equal(full["layers"]["attn"][name], base["layers"]["attn"][name])
    np.testing.assert_array_equal(full["layers"]["mlp"]["down_proj"], base["layers"]["mlp"]["down_proj"])
    # adapters trained: B left zero
    assert np.abs(r["last"]["lora"]["layers"]["mlp"]["down_lora_b"]).max() > 1e-4
    # optimizer state only for the trainable arrays: its size is a few times theirs, not the model's
    trainable = sum(x.size for x in jax.tree.leaves(r["last"]))
    opt = sum(x.size for x in jax.tree.leaves(r["opt"]))
    base_size = sum(x.size for x in jax.tree.leaves(r["base"]))
    assert trainable == r["trainer"].num_trainable() and opt <= 2 * trainable + 4 and trainable < base_size / 4


def test_lora_fsdp_tensor_mesh_of_8_matches_one_device():
    config = _config()
    batches = _batches(2)
    ref = _train({"data": 1, "fsdp": 1, "tensor": 1}, config, batches, devices=jax.devices()[:1])
    got = _train({"data": 2, "fsdp": 2, "tensor": 2}, config, batches)
    spec = got["trainer"].state_shardings.params["lora"]["layers"]["mlp"]["gate_lora_b"].spec
    assert tuple(spec) == (None, None, "tensor")  # [L, r, F]: the adapter follows its projection's rules
    assert tuple(got["trainer"].frozen_shardings["layers"]["mlp"]["gate_proj"].spec) == (None, "fsdp", "tensor")
    for a, b in zip(ref["metrics"], got["metrics"]):
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
        np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-6, rtol=0), got["first"], ref["first"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), got["last"], ref["last"])


def test_lora_microbatches_dropout_and_bf16_base():
    config = _config(dtype="bfloat16")
    batches = _batches(2)
    # the config's default loss (chunked): its bf16 x bf16 -> f32 dot over the behavior rows' few head
    # columns needs models.layers._narrow_operands on XLA:CPU (it failed there before)
    one = _train({"data": 2, "fsdp": 2, "tensor": 1}, config, batches, devices=jax.devices()[:4],
                 base_dtype="bfloat16")
    acc = _train({"data": 2, "fsdp": 2, "tensor": 1}, config, batches, microbatches=2, devices=jax.devices()[:4],
                 base_dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(one["frozen"])} == {np.dtype("bfloat16")}
    assert {x.dtype for x in jax.tree.leaves(one["last"])} == {np.dtype("float32")}  # fp32 trainable state
    for a, b in zip(one["metrics"], acc["metrics"]):
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=2e-2)
    drop = _train({"data": 1, "fsdp": 1, "tensor": 1}, _config(), batches, devices=jax.devices()[:1],
                  lora=LoraConfig(rank=4, alpha=8.0, dropout=0.5))
    nodrop = _train({"data": 1, "fsdp": 1, "tensor": 1}, _config(), batches, devices=jax.devices()[:1])
    # step 1: B = 0, so dropout cannot change the loss yet; step 2 it does
    np.testing.assert_allclose(drop["metrics"][0]["loss"], nodrop["metrics"][0]["loss"], rtol=1e-6)
    assert abs(float(drop["metrics"][1]["loss"]) - float(nodrop["metrics"][1]["loss"])) > 1e-6


def test_lora_chunked_loss_trains_as_the_full_loss():
    """The LoRA step on the chunked, budgeted loss path (no [B, T, V] logits) gives the full path's
    losses and adapter/row updates (fp32), over microbatches and with a budget small enough to fall back."""
    config = _config(tie_word_embeddings=False)
    batches = _batches(3)
    one = jax.devices()[:1]
    full = _train({"data": 1, "fsdp": 1, "tensor": 1}, config, batches, devices=one, lr=1e-2, microbatches=2,
                  loss_impl="full")  # explicit: the trainers' default is the config's (chunked)
    for budget in (0.5, 0.05):
        chunked = _train({"data": 1, "fsdp": 1, "tensor": 1}, config, batches, devices=one, lr=1e-2,
                         microbatches=2, loss_impl="chunked", loss_chunk=16, loss_budget=budget)
        for a, b in zip(full["metrics"], chunked["metrics"]):
            np.testing.assert_allclose(float(a["loss"]), float(b["loss"]), rtol=1e-5)
            np.testing.assert_allclose(float(a["grad_norm"]), float(b["grad_norm"]), rtol=1e-4)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=2e-5, rtol=0), full["last"], chunked["last"])


@pytest.mark.parametrize("tie,loss_impl", [(False, "full"), (True, "full"), (True, "chunked")])
def test_step_model_matches_the_merged_model(tie, loss_impl):
    """The model the step differentiates (the rows as their own parameters over the frozen table) has the
    merged model's loss (rows scattered into the table, the step before issue 28) and the same gradients
    w.r.t. adapters and rows, to fp32 rounding."""
    from bsft_jax.train.chunked_loss import model_loss_sums

    config = _config(tie_word_embeddings=tie)
    opt = default_config().optimizer
    tx, schedule = make_optimizer(opt, 10)
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    with jax.set_mesh(mesh):
        trainer = LoraTrainer(config, tx, schedule, mesh, lora=LoraConfig(rank=4, alpha=8.0), behavior_ids=ROWS)
        params = trainer.init_state(init_decoder(config, seed=3), seed=0).params
        rng = np.random.RandomState(0)  # adapters and rows away from their start, so that every path contributes
        params = jax.tree.map(lambda x: x + rng.normal(0, 0.05, x.shape).astype(x.dtype), params)
        batch = {k: jax.numpy.asarray(v) for k, v in _batches(1)[0].items()}
        assert np.isin(np.asarray(ROWS), batch["tokens"]).sum() >= 2  # rows looked up (and all in the head)
        options = dict(impl=loss_impl, chunk=16, budget=0.5)

        def loss(params, merged):
            model = (nnx.merge(trainer.model_graphdef, trainer.full_params(params, trainer.frozen)) if merged
                     else trainer.train_model(params, trainer.frozen))
            sums = model_loss_sums(model, batch, **options)
            return sums.ce / sums.tokens

        got, ref = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, merged) for merged in (False, True))
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
    head_grad = ref[1]["rows"]["embed"] if tie else ref[1]["rows"]["lm_head"].T
    assert np.abs(head_grad).max(axis=1).min() > 0  # every row gets a gradient (through the head at least)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got[1], ref[1])
