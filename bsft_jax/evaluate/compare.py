"""The paper's comparison (``python -m bsft_jax.evaluate``): every arm on the same test items.

:func:`run_comparison` evaluates the base model's prompting baselines (few-shot, explicit
instruction; :data:`BASELINES`), a GeneralSFT run and a BehaviorSFT run on every split asked for, and
writes one report folder per split (report.json, report.md, radar.png, predictions_<run>.jsonl).
:func:`load_run` and :func:`load_base` give the models it compares.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import jax

from bsft_jax import storage
from bsft_jax.checkpoint.layout import CheckpointError
from bsft_jax.checkpoint.read import load_params
from bsft_jax.checkpoint.recovery import newest_readable
from bsft_jax.data import FewShotPool, Record, label_space
from bsft_jax.evaluate.core import (
    MODES,
    EvalResult,
    as_records,
    check_force_behavior,
    evaluate_model,
    stratified_subset,
    write_comparison,
)
from bsft_jax.evaluate.judge import JudgeSettings, check_judge_settings, judge_comparison
from bsft_jax.evaluate.probe import add_probe_to_report, run_probe
from bsft_jax.evaluate.report import markdown_table
from bsft_jax.files import check_writable
from bsft_jax.models.hf import load_hf
from bsft_jax.models.sharding import make_mesh
from bsft_jax.setup.config import ConfigError, resolve, settings_from_saved
from bsft_jax.setup.model_setup import init_sharded, load_tokenizer, scratch_config, tokenizer_path
from bsft_jax.setup.settings import Settings
from bsft_jax.setup.sources import load_split

log = logging.getLogger("bsft_jax.evaluate")

BASELINES = {"few_shot": "few-shot (k=3)", "explicit_instruction": "explicit instruction"}
STYLE_NAMES = {"behavior_sft": "BehaviorSFT", "general_sft": "GeneralSFT",
               "explicit_instruction": "SFT (explicit instruction)"}


def load_run(run_dir: str, step: int | None, dtype: str, mesh: Any) -> tuple[Any, Any, Settings, str, int]:
    """(model, tokenizer, run settings, style, step) of a training run directory's checkpoint."""
    path = storage.join(run_dir, "config.json")
    if not storage.isfile(path):
        raise CheckpointError(f"{run_dir}: no config.json (is this a bsft_jax run directory?)")
    try:
        saved = json.loads(storage.read_text(path))
    except ValueError as e:  # truncated or hand-edited: every checkpoint step holds a copy in <step>/config
        copy = storage.join(run_dir, "checkpoints", "<step>", "config", "metadata")
        raise CheckpointError(f"{path}: not valid JSON ({e}); restore it from a copy (each step saves the resolved "
                              f"config as JSON in {copy})") from None
    run_settings = settings_from_saved(saved)
    _, (model, _, meta) = newest_readable(run_dir, lambda s: load_params(run_dir, s, mesh=mesh, dtype=dtype),
                                          step)  # a damaged newest step: the previous one, with a warning
    tok_dir = storage.join(run_dir, meta.get("tokenizer_dir", "tokenizer"))
    if not storage.isdir(tok_dir):
        raise CheckpointError(f"{run_dir}: no tokenizer folder {tok_dir!r} beside the checkpoints")
    return model, load_tokenizer(tok_dir), run_settings, run_settings.data.style, int(meta["step"])


def load_base(s: Settings, mesh: Any) -> tuple[Any, Any]:
    """(base model, base tokenizer) of the config: the HF checkpoint, or the untrained from-scratch init."""
    tokenizer = load_tokenizer(tokenizer_path(s.model, s.data, s.behavior.spec))
    rt = s.model.runtime
    if s.model.source == "hf":
        model, _ = load_hf(s.model.hf_path, dtype=rt.param_dtype, compute_dtype=rt.dtype, mesh=mesh)
    else:
        model = init_sharded(scratch_config(s.model, tokenizer), s.seed, mesh)
    return model, tokenizer


def run_comparison(
    config: Settings | Any,
    *,
    checkpoint: str = "",
    general_checkpoint: str = "",
    step: int | None = None,
    baselines: Sequence[str] = tuple(BASELINES),
    splits: Sequence[str] = ("test",),
    mode: str = "generate",
    out_dir: str = "",
    max_new_tokens: int = 64,
    batch_size: int = 32,
    limit: int = 0,
    few_shot_k: int = 3,
    force_behavior: str = "",
    steering_probe: bool = False,
    baseline_limit: int = 0,
    probe_limit: int = 0,
    judge: JudgeSettings | None = None,
) -> dict[str, dict[str, str]]:
    """Evaluates every run on every split and writes the reports; returns split -> written paths.

    config:         :class:`Settings` from :func:`bsft_jax.setup.config.resolve` (``training=False``; what the
                    CLI passes), or an ml_collections config, resolved here for this process's devices.

    limit:          items per split for the fine-tuned runs, categories in turn (0: all).
    baseline_limit: items for the prompting baselines (0: ``limit``); a smaller number takes the first
                    items of the same stratified order, so the baselines' items are a subset of the runs'.
                    The report's ``items`` row says how many each arm saw.
    steering_probe: also generate the BehaviorSFT run's replies with each behavior token forced and
                    add the rates to the report (:mod:`bsft_jax.evaluate.probe`), on ``probe_limit``
                    items (0: ``limit``).
    judge:          also rate every arm's replies with an LLM judge (:mod:`bsft_jax.evaluate.judge`) and add
                    the means to the report; a failed or unparseable rating is counted, never fatal.
    """
    settings = config if isinstance(config, Settings) else resolve_for_evaluation(config)
    _check_comparison_request(settings.run_dir, checkpoint, general_checkpoint, baselines, mode, out_dir, judge)
    mesh = make_mesh(settings.mesh_shape)
    spec = settings.behavior.spec
    train_records = as_records(load_split(settings.data, spec, settings.data.train_split), spec)
    tests = {s: stratified_subset(as_records(load_split(settings.data, spec, s), spec), limit) for s in splits}
    # Label sets come from the training split: listed in baseline prompts, ranked in loglik mode.
    common = dict(mode=mode, mesh=mesh, max_new_tokens=max_new_tokens, batch_size=batch_size, spec=spec,
                  label_space=label_space(train_records))
    results: dict[str, list[EvalResult]] = {s: [] for s in splits}
    if baselines:
        subsets = {s: _first(records, baseline_limit) for s, records in tests.items()}
        _evaluate_baselines(settings, mesh, baselines, train_records, subsets, few_shot_k, common, results)
    step_seen, probes = None, {}
    for run_dir, run_step in ((general_checkpoint, None), (checkpoint, step)):
        if run_dir:
            step_seen = _evaluate_run(run_dir, run_step, settings.model.runtime.dtype, tests, force_behavior, common,
                                      results, probes if steering_probe else None, probe_limit)
    if not out_dir:
        base = checkpoint or general_checkpoint or settings.run_dir
        out_dir = storage.join(base, "eval", f"step_{step_seen}" if step_seen is not None else "base")
    written = {}
    for split, runs in results.items():
        folder = storage.join(out_dir, split) if len(splits) > 1 else out_dir
        written[split] = write_comparison(runs, folder, title=f"BehaviorBench evaluation: {split} split")
        print(f"\n## {split} ({len(tests[split])} items) -> {folder}\n")
        print(markdown_table({r.name: r.metrics for r in runs}, {r.name: r.info for r in runs}))
        for run_name, probe in probes.get(split, {}).items():
            print(add_probe_to_report(folder, run_name, probe))
        if judge is not None:
            print(judge_comparison(folder, runs, tests[split], judge))
    return written


def resolve_for_evaluation(cfg: Any) -> Settings:
    """An evaluation config read once (:func:`bsft_jax.setup.config.resolve` without the training-batch rules:
    the comparison decodes in its own batches) for this process's devices."""
    return resolve(cfg, num_devices=jax.device_count(), num_processes=jax.process_count(), training=False)


def _first(records: list[Record], limit: int) -> list[Record]:
    """The first ``limit`` items of a stratified subset, still categories in turn (0: all of them)."""
    return stratified_subset(records, limit) if limit > 0 else records


def _check_comparison_request(run_dir: str, checkpoint: str, general_checkpoint: str, baselines: Sequence[str],
                              mode: str, out_dir: str, judge: JudgeSettings | None = None) -> None:
    """Every argument mistake, before any model is loaded: mode, baselines, run folders, the report folder,
    the judge."""
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {MODES}, got {mode!r}")
    if judge is not None:
        check_judge_settings(judge)
        if mode != "generate":
            raise ConfigError(f"--judge_url rates generated replies; --mode={mode} generates none (use generate)")
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(f"--baselines: unknown {unknown}; expected some of {sorted(BASELINES)}")
    if not (checkpoint or general_checkpoint or baselines):
        raise ConfigError("nothing to evaluate: give --checkpoint, --general_checkpoint or --baselines")
    for flag, run_dir in (("--checkpoint", checkpoint), ("--general_checkpoint", general_checkpoint)):
        if run_dir and not storage.isdir(run_dir):
            raise CheckpointError(f"{flag}={run_dir!r} is not a folder; point it at a training run directory")
    # The reports are written last: a read-only or misplaced folder is found now, not after decoding.
    default_out = storage.join(checkpoint or general_checkpoint or run_dir, "eval")
    check_writable(out_dir or default_out, "--out_dir" if out_dir else "--out_dir (default <checkpoint>/eval)")


def _evaluate_baselines(s: Settings, mesh: Any, baselines: Sequence[str], train_records: list[Record],
                        tests: dict[str, list[Record]], few_shot_k: int, common: dict[str, Any],
                        results: dict[str, list[EvalResult]]) -> None:
    """The prompting baselines of the base model (few-shot, explicit instruction), appended to ``results``."""
    model, tokenizer = load_base(s, mesh)
    pool = FewShotPool(train_records, k=few_shot_k, seed=s.seed)
    for style in baselines:
        name = BASELINES[style] if style != "few_shot" else f"few-shot (k={few_shot_k})"
        for split, records in tests.items():
            log.info("%s: %s on %d %s items", name, style, len(records), split)
            results[split].append(evaluate_model(model, tokenizer, records, name=name, style=style,
                                                 few_shot=pool, **common))


def _evaluate_run(run_dir: str, step: int | None, dtype: str, tests: dict[str, list[Record]], force_behavior: str,
                  common: dict[str, Any], results: dict[str, list[EvalResult]],
                  probes: dict[str, dict[str, Any]] | None = None, probe_limit: int = 0) -> int:
    """One training run's checkpoint on every split, appended to ``results``; returns the step it read.

    ``probes``: when given (a dict), a BehaviorSFT run's steering probe per split is stored in it.
    """
    model, tokenizer, run_settings, style, step_seen = load_run(run_dir, step, dtype, common["mesh"])
    name = STYLE_NAMES.get(style, style)
    force = force_behavior if style == "behavior_sft" and force_behavior else None
    spec = run_settings.behavior.spec  # the run's own behavior tokens
    if force:
        check_force_behavior(force, spec.names)  # before any decoding
    for split, records in tests.items():
        taken = {r.name for r in results[split]}
        unique = name if name not in taken else f"{name} ({storage.basename(run_dir)})"
        log.info("%s: step %d of %s on %d %s items", unique, step_seen, run_dir, len(records), split)
        result = evaluate_model(model, tokenizer, records, name=unique, style=style, force_behavior=force,
                                **{**common, "spec": spec})
        result.info.update(checkpoint=f"{run_dir}@{step_seen}")
        results[split].append(result)
        if probes is not None and style == "behavior_sft":
            log.info("%s: steering probe, forcing each of %s", unique, list(spec.names))
            probe_records = _first(records, probe_limit)
            probes.setdefault(split, {})[unique] = run_probe(
                lambda b, records=probe_records: evaluate_model(model, tokenizer, records, name=f"forced {b}",
                                                                style=style, force_behavior=b,
                                                                **{**common, "spec": spec}),
                spec.names)
    return step_seen
