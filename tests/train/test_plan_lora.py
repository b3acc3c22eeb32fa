"""The memory planner accounts for LoRA: no AdamW state or gradients for the frozen base, optional bf16 base."""

from __future__ import annotations

from bsft_jax.train.plan import plan_memory
from bsft_jax.train.plan_report import format_plan

from .common import tiny_config


def test_plan_lora_has_no_optimizer_state_for_the_base(tmp_path):
    over = {"mesh.fsdp": 2, "mesh.tensor": 2, "model.arch.hidden_size": 64, "model.arch.intermediate_size": 128}
    full = plan_memory(tiny_config(str(tmp_path / "a"), str(tmp_path / "tok"), **over), num_devices=4)
    lora_cfg = tiny_config(str(tmp_path / "b"), str(tmp_path / "tok"), **over, **{"model.lora.rank": 4})
    lora = plan_memory(lora_cfg, num_devices=4)
    half = plan_memory(tiny_config(str(tmp_path / "c"), str(tmp_path / "tok"), **over, **{
        "model.lora.rank": 4, "model.lora.base_dtype": "bfloat16"}), num_devices=4)
    fa, la, ha = full["analytic"], lora["analytic"], half["analytic"]
    assert la["frozen_base"] == fa["params"]  # the same weights, sharded the same way, now frozen
    assert ha["frozen_base"] * 2 == fa["params"]  # held in bf16
    # AdamW m and v (+ a count) for the trainable arrays only, and gradients of those only
    assert la["params"] < fa["params"] / 4 and la["gradients"] == la["params"]
    assert 2 * la["params"] <= la["opt_state"] <= 2 * la["params"] + 64
    assert la["opt_state"] < fa["opt_state"] / 4
    assert lora["xla"]["peak"] < full["xla"]["peak"] and half["xla"]["argument"] < lora["xla"]["argument"]
    text = format_plan(lora)
    assert "LoRA rank 4" in text and "frozen base" in text and "trainable parameters" in text
