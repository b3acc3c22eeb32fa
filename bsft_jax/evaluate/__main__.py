"""``python -m bsft_jax.evaluate --config configs/X.py --checkpoint RUN_DIR``: the paper's comparison.

On the same test items (every split in ``--splits``), one column each:

  few-shot (k=3)        the base model, prompted with 3 solved training scenes of the same category
  explicit instruction  the base model, with a system prompt describing the behaviors
  GeneralSFT            ``--general_checkpoint``: a run trained without behavior tokens (if given)
  BehaviorSFT           ``--checkpoint``: a run trained with behavior tokens

``--config`` names the data (test split, training split for the few-shot examples) and the base
model (``model.hf_path``, or for a from-scratch recipe such as the demo the untrained
initialisation with the run's seed). Each checkpoint brings its own tokenizer and its own
``config.json`` (format style, behavior tokens). Reports go to ``--out_dir`` (default
``<checkpoint>/eval/step_<N>``), one folder per split: report.json, report.md, radar.png and
predictions_<run>.jsonl. Decode throughput (tokens/s) is a row of the table.

``--judge_url URL --judge_model NAME`` also asks an OpenAI-compatible server to rate every reply
(specificity, implicitness; :mod:`bsft_jax.evaluate.judge`): the means per arm, group and category go
into report.md/json and each arm's ratings into judge_<run>.jsonl. The key comes from the environment
variable ``--judge_key_env`` names (default ``OPENAI_API_KEY``) and is never logged.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from bsft_jax.errors import cli_boundary
from bsft_jax.evaluate.compare import BASELINES, resolve_for_evaluation, run_comparison
from bsft_jax.evaluate.core import MODES
from bsft_jax.evaluate.judge import JudgeSettings
from bsft_jax.setup.cli import parse_flags, setup_logging


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (absl flags; ``--config.field=value`` overrides as in training)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", "configs/demo.py", "ml_collections config file (data, base model)",
                                    flag_values=fv)
    flags.DEFINE_string("checkpoint", "", "BehaviorSFT run directory (its latest checkpoint, or --step)",
                        flag_values=fv)
    flags.DEFINE_string("general_checkpoint", "", "GeneralSFT run directory", flag_values=fv)
    flags.DEFINE_integer("step", -1, "checkpoint step of --checkpoint (-1: latest)", flag_values=fv)
    flags.DEFINE_list("baselines", list(BASELINES), "base-model prompting baselines to run ('' for none)",
                      flag_values=fv)
    flags.DEFINE_list("splits", ["test"], "splits to evaluate", flag_values=fv)
    flags.DEFINE_enum("mode", "generate", list(MODES), "label scoring: parse replies, or rank options by "
                      "log-likelihood for multiple-choice items", flag_values=fv)
    flags.DEFINE_string("out_dir", "", "report folder, local or gs:// (default <checkpoint>/eval/step_<N>)",
                        flag_values=fv)
    flags.DEFINE_integer("max_new_tokens", 64, "reply budget", flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "prompts per decode call", flag_values=fv)
    flags.DEFINE_integer("limit", 0, "items per split, categories in turn (0: all)", flag_values=fv)
    flags.DEFINE_integer("baseline_limit", 0, "items for the prompting baselines, a prefix of the same "
                         "stratified order (0: --limit)", flag_values=fv)
    flags.DEFINE_integer("probe_limit", 0, "items for the steering probe (0: --limit)", flag_values=fv)
    flags.DEFINE_integer("few_shot_k", 3, "solved examples in few-shot prompts", flag_values=fv)
    flags.DEFINE_string("force_behavior", "", "force BehaviorSFT replies to start with this behavior token",
                        flag_values=fv)
    flags.DEFINE_bool("steering_probe", False, "also force each behavior token on the BehaviorSFT run and report "
                      "the rates (flag / none / unparsed)", flag_values=fv)
    flags.DEFINE_string("judge_url", "", "also rate each reply with an LLM judge at this OpenAI-compatible URL "
                        "(e.g. http://127.0.0.1:8000/v1); the means go into the report", flag_values=fv)
    flags.DEFINE_string("judge_model", "", "the judge's model name (with --judge_url)", flag_values=fv)
    flags.DEFINE_string("judge_key_env", "OPENAI_API_KEY", "environment variable holding the judge's API key "
                        "(read from the environment only, never logged)", flag_values=fv)
    code = parse_flags(fv, sys.argv if argv is None else argv, __doc__)
    if code is not None:
        return code
    setup_logging()

    def evaluate() -> None:
        settings = resolve_for_evaluation(fv.config)  # the config read once, validated (exit 2 on a bad field)
        run_comparison(settings, checkpoint=fv.checkpoint, general_checkpoint=fv.general_checkpoint,
                       step=None if fv.step < 0 else fv.step, baselines=[b for b in fv.baselines if b],
                       splits=fv.splits, mode=fv.mode, out_dir=fv.out_dir, max_new_tokens=fv.max_new_tokens,
                       batch_size=fv.batch_size, limit=fv.limit, few_shot_k=fv.few_shot_k,
                       force_behavior=fv.force_behavior, steering_probe=fv.steering_probe,
                       baseline_limit=fv.baseline_limit, probe_limit=fv.probe_limit,
                       judge=JudgeSettings(fv.judge_url, fv.judge_model, key_env=fv.judge_key_env)
                       if fv.judge_url or fv.judge_model else None)

    return cli_boundary(evaluate)  # bad config, data, run folder or step: one line, exit 2


if __name__ == "__main__":
    sys.exit(main())
