"""The planner's model: the DecoderConfig a recipe would train, from the HF folder's config.json or a preset.

No weights are read: only ``config.json`` and the tokenizer (for the behavior tokens' vocabulary
growth) when the HF folder is on this machine, else a preset of :mod:`bsft_jax.models.config`.
"""

from __future__ import annotations

import os
import re
from typing import Any

from bsft_jax import storage
from bsft_jax.behavior.surgery import grown_vocab_size
from bsft_jax.models.config import PRESETS, DecoderConfig, preset
from bsft_jax.setup.model_setup import load_tokenizer, scratch_config, tokenizer_path
from bsft_jax.setup.settings import BehaviorSettings, DataSettings, ModelSettings
from bsft_jax.train.plan_targets import PlanError

# Tokenizer sizes of the presets' families (len(tokenizer)): the behavior tokens grow the
# embedding table from here when the HF folder is not on this machine.
PRESET_TOKENIZER_SIZES = {"qwen2_5": 151_665, "llama3": 128_256, "qwen3": 151_669, "gemma3": 262_144,
                          "medgemma": 262_144}


def _normalise(name: str) -> str:
    name = os.path.basename(os.path.normpath(name)).lower()
    name = re.sub(r"[-_]?(instruct|chat|base|hf)$|[-_]it$", "", name)  # "-it": Gemma's instruction-tuned
    return re.sub(r"[^a-z0-9]", "", name)


def guess_preset(hf_path: str) -> str | None:
    """The preset whose name matches an HF folder name (``Qwen2.5-7B-Instruct`` -> ``qwen2_5_7b``)."""
    key = _normalise(hf_path)
    for name in PRESETS:
        if _normalise(name) == key:
            return name
    return None


def _preset_tokenizer_size(preset_name: str) -> int:
    for family, size in PRESET_TOKENIZER_SIZES.items():
        if preset_name.startswith(family):
            return size
    raise PlanError(f"preset {preset_name!r}: tokenizer size unknown; put the HF folder (config.json and tokenizer) "
                    "at config.model.hf_path")


def model_config_for_plan(model: ModelSettings, data: DataSettings, behavior: BehaviorSettings,
                          model_preset: str | None = None) -> tuple[Any, str]:
    """The DecoderConfig a run of these settings would train (vocabulary grown by the behavior tokens).

    Reads only ``config.json`` and the tokenizer when the HF folder exists; otherwise uses the
    preset named by ``model_preset`` or guessed from ``model.hf_path``'s folder name. Returns
    ``(config, how)`` where ``how`` says where the architecture came from.
    """
    rt, spec = model.runtime.fields(), behavior.spec
    tokenizer, preset_name = None, None
    tok_path = tokenizer_path(model, data, spec) if (model.source == "scratch" or not model_preset) else ""
    if tok_path and storage.isdir(tok_path):
        tokenizer = load_tokenizer(tok_path)
    hf_json = storage.join(model.hf_path or "", "config.json")
    if model.source == "scratch":
        if tokenizer is None:
            raise PlanError(f"config.tokenizer.path={model.tokenizer_path!r}: a from-scratch model needs its tokenizer")
        config, how = scratch_config(model, tokenizer), "config.model.arch (from scratch)"
    elif not model_preset and storage.isfile(hf_json):
        config, how = DecoderConfig.from_hf(model.hf_path, param_dtype=rt["param_dtype"], dtype=rt["dtype"],
                                            logits_dtype=rt["logits_dtype"], remat=rt["remat"]), hf_json
    else:
        preset_name = model_preset or guess_preset(model.hf_path)
        if preset_name is None:
            raise PlanError(f"config.model.hf_path={model.hf_path!r} has no config.json here and names no known "
                            "preset; pass --plan_model=PRESET (bsft_jax.models.config.PRESETS)")
        config = preset(preset_name, **rt)
        how = f"preset {preset_name}" + ("" if model_preset else f" ({hf_json} not found)")
    if behavior.enabled:
        if tokenizer is not None:
            vocab = tokenizer.get_vocab()
            num_tokens = len(tokenizer) + sum(t not in vocab for t in spec.tokens)
        elif preset_name is not None:
            num_tokens = _preset_tokenizer_size(preset_name) + len(spec.tokens)
        else:
            raise PlanError(f"{tok_path or model.hf_path}: no tokenizer here; the behavior tokens' vocabulary "
                            "growth needs it (or pass --plan_model=PRESET)")
        rows = grown_vocab_size(config.vocab_size, num_tokens, model.vocab_pad_multiple)
        config = config.replace(vocab_size=rows, valid_vocab_size=min(num_tokens, rows))
    return config, how
