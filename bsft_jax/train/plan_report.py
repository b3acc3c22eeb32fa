"""The planner's report: per-device memory of the train step as a table a person reads."""

from __future__ import annotations

from typing import Any

from bsft_jax.train.plan_targets import TARGETS
from bsft_jax.units import human_bytes as _gib


def format_plan(plan: dict[str, Any], config_name: str = "") -> str:
    """A human-readable report of :func:`plan_memory`'s result."""
    a, x, m, b = plan["analytic"], plan["xla"], plan["model"], plan["batch"]
    mesh = " ".join(f"{k}={v}" for k, v in plan["mesh"].items())
    where = f"{plan['target']} ({plan['num_devices']} devices)" if plan["target"] else f"{plan['num_devices']} devices"
    compiler = {"tpu": f"XLA TPU compiler (deviceless AOT for {plan['device_kind']})",
                "cpu": "XLA CPU compiler over fake CPU devices (an estimate)"}[plan["compiler"]]
    lines = [
        f"memory plan{' of ' + config_name if config_name else ''} on {where}, mesh {mesh}",
        f"  model: {m['model_type']} {m['num_params'] / 1e9:.3g}B parameters, {m['vocab_rows']:,} vocab rows; "
        f"architecture from {m['architecture']}",
        f"  numerics: compute {m['dtype']}, parameters/optimizer {m['param_dtype']}, remat={m['remat']}",
        f"  batch: {b['global_batch_size']} rows x {b['seq_len']} tokens, {b['microbatches']} microbatch(es), "
        f"{b['rows_per_device_per_microbatch']} row(s) per device per microbatch",
        "  per device, analytic (exact from shapes x dtype / shards):",
        *([f"  LoRA rank {m['lora']['rank']} on {','.join(m['lora']['targets'])}: {m['trainable_params']:,} "
           "trainable parameters (adapters + behavior rows); the base is frozen (no gradients, no AdamW state)",
           f"    frozen base                     {_gib(a['frozen_base'])}"] if m.get("lora") else []),
        f"    {'trainable parameters' if m.get('lora') else 'parameters':<32}{_gib(a['params'])}",
        f"    optimizer state (AdamW m, v)    {_gib(a['opt_state'])}",
        f"    gradients{' (accumulator + micro)' if b['microbatches'] > 1 else '                      '}"
        f" {_gib(a['gradients'])}",
        f"    batch                           {_gib(a['batch'])}",
        f"    activations, lower bound: layer inputs kept {_gib(a['layer_inputs_kept'])}, "
        f"fp32 logits {_gib(a['logits_fp32'])}",
        *_xla_lines(plan, compiler),
    ]
    hbm = plan["hbm_bytes_per_device"]
    if x["peak"] is None:
        lines.append(f"  does NOT fit: the compiler needs {_gib(x['temp'])} of temporaries alone, "
                     f"{_gib(x['out_of_memory']['available'])} per device are available to them")
    elif hbm:
        verdict = "fits" if plan["fits"] else "does NOT fit"
        lines.append(f"  {verdict}: peak {_gib(x['peak'])} of {_gib(hbm)} per device "
                     f"({100 * x['peak'] / hbm:.0f}%)")
    if plan["compiler"] == "cpu":
        lines.append("  note: CPU figures: shardings and buffer sizes are right, but TPU/GPU compilers fuse, lay out "
                     "and schedule differently (temporaries here were 0.9-1.6x the TPU compiler's for the shipped "
                     "recipes)")
        if plan["target"] and TARGETS[plan["target"]].platform == "tpu":
            lines.append("  note: for the TPU compiler's own figure: pip install libtpu==0.0.42.1 (jax 0.10.2's pin)")
    if plan.get("note"):
        lines.append(f"  note: {plan['note']}")
    return "\n".join(lines)


def _xla_lines(plan: dict[str, Any], compiler: str) -> list[str]:
    """The compiled step's figures, or the compiler's out-of-memory refusal."""
    a, x = plan["analytic"], plan["xla"]
    if x["peak"] is None:
        return [f"  per device, {compiler}: refused after {plan['compile_seconds']}s: {x['out_of_memory']['message']}"]
    return [
        f"  per device, {compiler}, compiled in {plan['compile_seconds']}s:",
        f"    arguments (state + batch)       {_gib(x['argument'])}",
        f"    outputs (new state, donated)    {_gib(x['output'])}  (aliased to arguments: {_gib(x['alias'])})",
        f"    temporaries                     {_gib(x['temp'])}  (activations, gradients, gathered weights, logits)",
        f"    peak = args + outputs - aliased + temporaries  {_gib(x['peak'])}",
        f"    of which activations and other temporaries (temporaries - analytic gradients) "
        f"{_gib(max(x['temp'] - a['gradients'], 0))}",
    ]
