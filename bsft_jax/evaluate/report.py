"""Evaluation report files: JSON, a Markdown comparison table (one column per run) and a radar plot of
per-category F1 with the runs overlaid (the paper's Figure 5).

Input is ``runs``: run name -> the dict of :func:`bsft_jax.evaluate.metrics.compute_metrics`, in column order,
and optionally ``info``: run name -> extra facts to show (checkpoint, scoring mode, tokens/s, ...).
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from bsft_jax import storage
from bsft_jax.behavior import taxonomy
from bsft_jax.files import atomic_write

JSON_NAME = "report.json"
MARKDOWN_NAME = "report.md"
RADAR_NAME = "radar.png"
# The paper's Figure 5 colours the categories by group.
GROUP_COLORS = {"reactive": "#1f77b4", "balanced": "#2ca02c", "proactive": "#d62728"}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _rate_cell(r: Mapping[str, Any]) -> str:
    return "n/a" if r["rate"] is None else f"{100 * r['rate']:.1f} ({r['count']}/{r['total']})"


def _categories(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return taxonomy.in_order(c for m in runs.values() for c in m["per_category"])


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown_table(runs: Mapping[str, Mapping[str, Any]], info: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The comparison table: categories, group means, overall, behavior and intervention rows; F1 in %."""
    names = list(runs)
    lines = [_row(["Category", "Group", "n", *names]), _row(["---"] * (3 + len(names)))]
    for category in _categories(runs):
        first = next(m["per_category"][category] for m in runs.values() if category in m["per_category"])
        cells = [_pct(m["per_category"][category]["f1"]) if category in m["per_category"] else "-"
                 for m in runs.values()]
        # arms may see different numbers of items (e.g. fewer for slow prompting baselines): list each size
        sizes = sorted({m["per_category"][category]["n"] for m in runs.values() if category in m["per_category"]})
        lines.append(_row([category, first["group"] or "?", "/".join(map(str, sizes)), *cells]))
    for group in taxonomy.GROUPS:
        lines.append(_row([f"**{group} (mean F1)**", "", "", *[_pct(m["per_group"][group]) for m in runs.values()]]))
    lines.append(_row(["**overall (mean F1)**", "", "", *[f"**{_pct(m['overall_f1'])}**" for m in runs.values()]]))
    if any(m.get("hard_f1") is not None for m in runs.values()):
        lines.append(_row(["hard subset (mean F1)", "", str(max(m.get("num_hard", 0) for m in runs.values())),
                           *[_pct(m.get("hard_f1")) for m in runs.values()]]))
    lines.append(_row(["behavior-selection accuracy", "", "",
                       *[_pct(m["behavior"]["accuracy"]) if m["behavior"] else "n/a" for m in runs.values()]]))
    if any(m.get("decision") for m in runs.values()):
        lines.append(_row(["intervene-vs-hold accuracy (open items)", "",
                           "/".join(map(str, sorted({m["decision"]["n"] for m in runs.values() if m.get("decision")}))),
                           *[_pct(m["decision"]["accuracy"]) if m.get("decision") else "-" for m in runs.values()]]))
    lines.append(_row(["over-intervention rate", "", "", *[_rate_cell(m["over_intervention"]) for m in runs.values()]]))
    lines.append(_row(["missed-intervention rate", "", "",
                       *[_rate_cell(m["missed_intervention"]) for m in runs.values()]]))
    lines.append(_row(["unparsed replies", "", "", *[f"{m['num_unparsed']}/{m['num_items']}" for m in runs.values()]]))
    keys = sorted({k for i in (info or {}).values() for k in i})
    for key in keys:
        lines.append(_row([key, "", "", *[_fmt(info.get(n, {}).get(key)) for n in names]]))
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def confusion_markdown(behavior: Mapping[str, Any]) -> str:
    """A behavior confusion matrix (rows gold, columns predicted) as a Markdown table."""
    lines = [_row(["gold \\ predicted", *behavior["columns"]]), _row(["---"] * (1 + len(behavior["columns"])))]
    for name, counts in zip(behavior["rows"], behavior["confusion"]):
        lines.append(_row([name, *map(str, counts)]))
    return "\n".join(lines) + "\n"


def markdown_report(runs: Mapping[str, Mapping[str, Any]], info: Mapping[str, Mapping[str, Any]] | None = None,
                    *, title: str = "BehaviorBench evaluation") -> str:
    """The whole Markdown report: the comparison table, then per-run behavior matrices and unparsed examples."""
    parts = [f"# {title}\n\n", "Macro-F1 per category (%), over the category's label set; unparseable replies count "
             "as wrong. Group and overall rows are unweighted means of the category scores.\n\n",
             markdown_table(runs, info)]
    for name, m in runs.items():
        if m["behavior"]:
            parts.append(f"\n## {name}: behavior selection (accuracy {_pct(m['behavior']['accuracy'])}%)\n")
            parts.append(confusion_markdown(m["behavior"]))
        if m["unparsed_examples"]:
            parts.append(f"\n## {name}: unparsed replies ({m['num_unparsed']}), first ones\n")
            for ex in m["unparsed_examples"]:
                parts.append(f"- `{ex['id']}`: {json.dumps(ex['reply'])}\n")
    return "".join(parts)


def radar_plot(runs: Mapping[str, Mapping[str, Any]], path: str, *, title: str = "Macro-F1 per category") -> None:
    """Writes a PNG radar chart: one spoke per category, one closed polygon per run (F1 in %)."""
    import matplotlib  # import-time cost (~0.5 s): only when a chart is drawn

    matplotlib.use("Agg")  # headless; the Figure API below never touches pyplot's global state
    from matplotlib.figure import Figure

    categories = _categories(runs)
    angles = [2 * math.pi * i / len(categories) for i in range(len(categories))]
    fig = Figure(figsize=(9, 9))
    ax = fig.add_subplot(projection="polar")
    for name, m in runs.items():
        values = [100 * m["per_category"][c]["f1"] if c in m["per_category"] else 0.0 for c in categories]
        ax.plot([*angles, angles[0]], [*values, values[0]], linewidth=1.8, label=name)
        ax.fill([*angles, angles[0]], [*values, values[0]], alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels([textwrap.fill(c, 18) for c in categories], fontsize=8)
    _colour_by_group(ax, categories, angles)
    ax.set_ylim(0, 100)
    ax.set_yticks([20, 40, 60, 80, 100])
    ax.set_title(title, pad=24)
    ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.12), fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:  # a file object: local or gs://
        fig.savefig(f, format="png", dpi=110)


def group_colors(categories: list[str]) -> list[str]:
    """The colour of each category's group (grey for categories outside the taxonomy)."""
    return [GROUP_COLORS.get(taxonomy.group_of(c) if c in taxonomy.CATEGORY_BY_NAME else "", "#7f7f7f")
            for c in categories]


def _colour_by_group(ax: Any, categories: list[str], angles: list[float]) -> None:
    """Colours the spoke labels by group and shades each group's sector (the paper's Figure 5)."""
    from matplotlib.patches import Patch

    colors = group_colors(categories)
    width = 2 * math.pi / max(len(categories), 1)
    for label, color in zip(ax.get_xticklabels(), colors):
        label.set_color(color)
    ax.bar(angles, [100] * len(angles), width=width, color=colors, alpha=0.06, linewidth=0, zorder=0)
    handles = [Patch(color=c, alpha=0.4, label=f"{g} categories") for g, c in GROUP_COLORS.items() if c in colors]
    ax.figure.legend(handles=handles, loc="lower right", fontsize=8)


def write_report(
    runs: Mapping[str, Mapping[str, Any]],
    out_dir: str | os.PathLike,
    info: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    title: str = "BehaviorBench evaluation",
) -> dict[str, str]:
    """Writes report.json, report.md and radar.png into ``out_dir``; returns kind -> path."""
    if not runs:
        raise ValueError("write_report: no runs to report")
    out_dir = os.fspath(out_dir)
    storage.makedirs(out_dir)
    paths = {"json": storage.join(out_dir, JSON_NAME), "markdown": storage.join(out_dir, MARKDOWN_NAME),
             "radar": storage.join(out_dir, RADAR_NAME)}
    payload = {"runs": list(runs), "metrics": dict(runs), "info": dict(info or {})}
    with atomic_write(paths["json"]) as f:
        json.dump(payload, f, indent=2, sort_keys=False)
    with atomic_write(paths["markdown"]) as f:
        f.write(markdown_report(runs, info, title=title))
    radar_plot(runs, paths["radar"])
    return paths


def add_section(folder: str, update: Callable[[dict[str, Any]], None], markdown: str) -> str:
    """Adds a section to the report in ``folder`` (local or gs://): ``update`` edits report.json's dict in
    place, ``markdown`` is appended to report.md; each file is rewritten atomically. Returns ``markdown``."""
    json_path, md_path = storage.join(folder, JSON_NAME), storage.join(folder, MARKDOWN_NAME)
    report = json.loads(storage.read_text(json_path))
    update(report)
    with atomic_write(json_path) as f:
        json.dump(report, f, indent=2)
    text = storage.read_text(md_path)
    with atomic_write(md_path) as f:
        f.write(text + markdown)
    return markdown
