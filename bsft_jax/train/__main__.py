"""``python -m bsft_jax.train --config configs/X.py [--config.field=value ...]``: BehaviorSFT training."""

from __future__ import annotations

import logging
import sys

from absl import flags
from ml_collections import config_flags

from bsft_jax.errors import cli_boundary
from bsft_jax.setup.cli import parse_flags, setup_logging
from bsft_jax.train import plan
from bsft_jax.train.distributed import is_primary
from bsft_jax.train.loop import NonFiniteLossError, resolve_for_training, run

log = logging.getLogger("bsft_jax.train")

_USAGE = """python -m bsft_jax.train --config configs/X.py [--config.section.field=value ...]
       python -m bsft_jax.train --config configs/X.py --plan [--mesh=data=1,fsdp=-1,tensor=4] [--plan_target=v5p-64]

Trains (or resumes, if config.run_dir has checkpoints) the recipe in the config file; --plan reports
per-device memory of the train step on a target mesh instead. Every config field can be overridden."""


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: parses absl flags (``--config``), runs, maps errors to exit codes."""
    if "--plan" in (sys.argv if argv is None else argv)[1:]:  # memory planner: compiles the step, trains nothing
        return plan.main(argv)
    flags_def = flags.FlagValues()
    config_flags.DEFINE_config_file("config", "configs/demo.py", "ml_collections config file", flag_values=flags_def)
    code = parse_flags(flags_def, sys.argv if argv is None else argv, _USAGE)
    if code is not None:
        return code
    setup_logging()

    def train() -> int:
        settings = resolve_for_training(flags_def.config)  # the config read once (jax.distributed started first)
        if not is_primary():  # one progress log per job: the other processes report only problems
            logging.getLogger().setLevel(logging.WARNING)
        result = run(settings)
        log.info("finished at step %d%s", result.final_step, " (preempted)" if result.preempted else "")
        return 0

    try:
        return cli_boundary(train)  # bad config, data or checkpoint: one line, exit 2
    except NonFiniteLossError as e:  # the run diverged: not bad input, but no traceback helps either
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
