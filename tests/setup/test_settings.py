"""The config resolved into typed pieces: each piece checks its own fields and names the bad one."""

from __future__ import annotations

import pytest

from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.setup.config import default_config
from bsft_jax.setup.settings import ConfigError, ModelRuntime, OptimizerSettings, Settings, TrainSettings


def test_defaults_resolve_into_typed_pieces():
    s = Settings.from_config(default_config())
    assert isinstance(s.behavior.spec, BehaviorSpec) and s.behavior.spec.names == ("reactive", "balanced", "proactive")
    assert s.optimizer.b2 == 0.95 and s.train.global_batch_size == 8 and s.data.demo["num_train"] == 5200
    assert s.model.runtime.fields()["remat"] == "none" and s.model.base_tokenizer == ""
    assert s.checkpoint.keep == 3 and s.checkpoint.async_save and s.checkpoint.keep_best_metric == ""
    assert s.mesh.sizes() == {"data": 1, "fsdp": -1, "tensor": 1} and s.distributed.initialize == "auto"
    assert s.logging.tensorboard


@pytest.mark.parametrize("block, field, value, message", [
    ("optimizer", "b1", 1.0, r"config.optimizer.b1: must be in \[0, 1\)"),
    ("optimizer", "learning_rate", 0.0, "config.optimizer.learning_rate: must be > 0"),
    ("train", "eval_every", -2, "config.train.eval_every: must be -1"),
    ("train", "microbatches", 0, "config.train.microbatches: must be > 0"),
    ("train", "loss_impl", "fused", "config.train.loss_impl: 'fused' is not one of"),
    ("train", "loss_chunk", 0, "config.train.loss_chunk: must be > 0"),
    ("train", "loss_budget", 1.5, r"config.train.loss_budget: must be in \(0, 1\]"),
    ("data", "style", "chatty", "config.data.style: 'chatty' is not one of"),
    ("data", "source", "s3", "config.data.source: 's3' is not one of"),
    ("model", "remat", "some", "config.model.remat: 'some' is not one of"),
    ("model", "dtype", "float8", "config.model.dtype"),
    ("model", "source", "zip", "config.model.source: 'zip' is not one of"),
    ("behavior", "token_format", "<{x}>", "config.behavior.token_format"),
    ("behavior", "names", ("a", "a"), "config.behavior.names"),
    ("behavior", "init", "zeros", "config.behavior.init: 'zeros' is not one of"),
    ("checkpoint", "keep", 0, "config.checkpoint.keep: must be > 0"),
    ("checkpoint", "every_steps", -5, "config.checkpoint.every_steps: must be > 0"),
    ("mesh", "tensor", 0, "config.mesh.tensor: must be a positive size or -1"),
    ("distributed", "initialize", "sometimes", "config.distributed.initialize: 'sometimes' is not one of"),
])
def test_each_piece_names_its_bad_field(block, field, value, message):
    cfg = default_config()
    cfg[block][field] = value
    with pytest.raises(ConfigError, match=message):
        Settings.from_config(cfg)


def test_pieces_validate_when_built_directly():
    with pytest.raises(ConfigError, match="config.model.attention_impl: is 'cudnn' but model.dtype='float32'"):
        ModelRuntime(dtype="float32", param_dtype="float32", logits_dtype="float32", remat="none", scan_unroll=1,
                     attention_impl="cudnn")
    with pytest.raises(ConfigError, match="config.train.steps"):
        TrainSettings(steps=0, global_batch_size=8, microbatches=1, z_loss=0.0, log_every=1, eval_every=0)
    ok = OptimizerSettings(learning_rate=1e-3, warmup_steps=0, min_lr_ratio=1.0, b1=0.0, b2=0.5, eps=1e-8,
                           weight_decay=0.0, grad_clip_norm=0.0, decay_embeddings=False)
    assert ok.min_lr_ratio == 1.0  # the floor may equal the peak; b1/b2 may not reach 1


def test_lora_is_a_typed_piece_of_the_model_settings():
    from bsft_jax.models.lora_config import LoraConfig
    from bsft_jax.setup.settings import LoraSettings

    assert Settings.from_config(default_config()).model.lora.config is None  # rank 0: full fine-tuning
    cfg = default_config()
    cfg.model.lora.update(rank=8, alpha=32, targets=" q, v ", base_dtype="bfloat16")
    lora = Settings.from_config(cfg).model.lora
    assert lora == LoraSettings(rank=8, alpha=32.0, targets=("q", "v"), base_dtype="bfloat16")
    assert lora.config == LoraConfig(rank=8, alpha=32.0, targets=("q", "v")) and lora.config.scale == 4.0
    for field, value, message in (("targets", "q,qq", r"config.model.lora.targets: unknown \['qq'\]"),
                                  ("dropout", 1.0, r"config.model.lora.dropout: must be in \[0, 1\)"),
                                  ("rank", -1, "config.model.lora.rank: must be >= 0"),
                                  ("base_dtype", "int8", "config.model.lora.base_dtype")):
        bad = default_config()
        bad.model.lora[field] = value
        with pytest.raises(ConfigError, match=message):
            Settings.from_config(bad)


def test_resolve_holds_what_the_run_needs_and_every_cross_field_rule(tmp_path):
    from bsft_jax.setup.config import config_to_dict, resolve

    cfg = default_config()
    cfg.run_dir = str(tmp_path / "run")
    cfg.model.source, cfg.tokenizer.path = "scratch", "demo"
    s = resolve(cfg, num_devices=4, num_processes=2)
    assert s.run_dir == cfg.run_dir and s.mesh_shape == {"data": 1, "fsdp": 4, "tensor": 1}
    assert s.config_json == config_to_dict(cfg)  # what is saved beside every checkpoint
    cfg.checkpoint.keep_best_metric = "overall_f1"  # a steering metric without steering evaluations
    with pytest.raises(ConfigError, match="config.checkpoint.keep_best_metric: 'overall_f1' is a steering metric"):
        resolve(cfg, num_devices=1)  # the keep-best rule is one of resolve's, not the training loop's
    cfg.checkpoint.keep_best_metric = ""
    cfg.train.global_batch_size = 6
    with pytest.raises(ConfigError, match="config.train.global_batch_size: 6 is not divisible"):
        resolve(cfg, num_devices=4)
    assert resolve(cfg, num_devices=4, training=False).mesh_shape["fsdp"] == 4  # evaluation forms no train batch


def test_evaluation_validates_its_config():
    from bsft_jax.evaluate.compare import run_comparison

    cfg = default_config()
    cfg.train.loss_impl = "fused"
    with pytest.raises(ConfigError, match="config.train.loss_impl: 'fused' is not one of"):
        run_comparison(cfg, baselines=("few_shot",))


def test_step_defaults_live_on_the_trainers_piece():
    from bsft_jax.setup.settings import StepSettings

    t = Settings.from_config(default_config()).train
    assert t.step == StepSettings()  # default_config reads its train-step defaults from the piece
    assert StepSettings(loss_impl="full").loss_options == {"impl": "full", "chunk": 256, "budget": 0.5}
    with pytest.raises(ConfigError, match="config.train.loss_impl: 'fused' is not one of"):
        StepSettings(loss_impl="fused")  # what Trainer(..., loss_impl="fused") raises too
