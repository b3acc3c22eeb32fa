"""The steering probe: force each behavior token on a BehaviorSFT run and report what the replies do.

For every behavior name the run's replies are generated with that token forced first
(``evaluate_records(..., force_behavior=name)``, the evaluator's own path), and the report gives
rates over the items: on open (non-multiple-choice) items the share of replies that raise a flag
(any label other than ``none``), that answer ``none``, and on all items the share left unparsed.
A model that learned the tokens' meaning gives, e.g., forced ``hold`` -> almost no flags and
forced ``intervene`` -> mostly flags, whatever the item calls for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bsft_jax.data.schema import NO_INTERVENTION
from bsft_jax.evaluate.core import EvalResult
from bsft_jax.evaluate.metrics import UNPARSED
from bsft_jax.evaluate.report import add_section

SECTION = "## Steering probe"


def probe_rates(result: EvalResult) -> dict[str, Any]:
    """Flag / none rates on open items and the unparsed rate on all items of one forced run."""
    open_items = [i for i in result.items if not i.multiple_choice]
    flags = sum(i.prediction not in (NO_INTERVENTION, UNPARSED) for i in open_items)
    nones = sum(i.prediction == NO_INTERVENTION for i in open_items)
    unparsed = sum(i.prediction == UNPARSED for i in result.items)
    n_open = len(open_items)
    return {"flag_rate": flags / n_open if n_open else None, "none_rate": nones / n_open if n_open else None,
            "unparsed_rate": unparsed / len(result.items) if result.items else None, "open_items": n_open,
            "items": len(result.items), "overall_f1": result.metrics["overall_f1"]}


def run_probe(evaluate: Callable[[str], EvalResult], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{behavior: probe_rates}`` with ``evaluate(name)`` giving the run with that token forced."""
    return {name: probe_rates(evaluate(name)) for name in names}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def probe_markdown(run: str, probe: Mapping[str, Mapping[str, Any]]) -> str:
    """The probe as a Markdown section: one row per forced behavior, rates in %."""
    lines = [f"\n{SECTION}: {run}, each behavior token forced\n\n",
             "Rates in %: flag / none over open (non-multiple-choice) items, unparsed over all items.\n\n",
             "| forced behavior | replies with a flag | replies 'none' | unparsed | macro-F1 | open items |\n",
             "| --- | --- | --- | --- | --- | --- |\n"]
    for name, r in probe.items():
        lines.append(f"| {name} | {_pct(r['flag_rate'])} | {_pct(r['none_rate'])} | {_pct(r['unparsed_rate'])} | "
                     f"{_pct(r['overall_f1'])} | {r['open_items']} |\n")
    return "".join(lines)


def add_probe_to_report(folder: str, run: str, probe: Mapping[str, Mapping[str, Any]]) -> str:
    """Appends the probe to ``folder``'s report.md and stores it as ``steering_probe`` in report.json."""
    return add_section(folder, lambda report: report.setdefault("steering_probe", {}).update({run: dict(probe)}),
                       probe_markdown(run, probe))
