"""Renders every measured table in BENCHMARKS.md and docs/*.md from the committed result files.

    python -m bench.render            # rewrite the tables between their markers, warn about stale ones
    python -m bench.render --check    # exit 1 if a doc differs from what would be rendered

A table lives between ``<!-- table:NAME -->`` and ``<!-- /table -->`` in a doc; its text is made by
the NAME entry of ``bench.tables.TABLES`` from records in ``bench/results.jsonl`` (or another
committed file), and carries the commit, date, machine and seed it was measured with. A table is
*stale* when the library paths it depends on have changed since that commit: the renderer prints a
warning for each (it does not fail: a quiet machine is needed to re-measure, see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from bench.tables import TABLES, Table, load_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("BENCHMARKS.md", "docs/evaluation.md", "docs/training.md")  # the docs that hold tables (bench/tables.py)
_BLOCK = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def measured_commit(machine: dict[str, Any]) -> str:
    """The commit a record measured: the ``git`` stamp, or the one named 'committed as X' in it."""
    git = str(machine.get("git") or "")
    named = re.search(r"committed as ([0-9a-f]{7,40})", git)
    if named:
        return named.group(1)
    head = re.match(r"[0-9a-f]{7,40}", git)
    return head.group(0) if head else ""


def machine_stamp(record: dict[str, Any]) -> str:
    """Where a record was measured: 'AMD EPYC (AVX-512, no AMX), 2 CPUs; jax ...' or the GPU; from its machine info."""
    machine = record["machine"]
    if machine.get("jax_backend") == "gpu":
        device = record["results"].get("device") or "GPU " + ", ".join(machine.get("devices", []))
        where = f"{device}, {machine.get('cpu_count')} CPU cores"
    elif machine.get("cpu_model"):
        where = f"{machine['cpu_model']}, {machine.get('cpu_count')} CPUs"
        if "cpu_flags" in machine:
            avx = "AVX-512" if any(f.startswith("avx512") for f in machine["cpu_flags"]) else "no AVX-512"
            where += f" ({avx}, {'AMX' if machine.get('amx') else 'no AMX'})"
    else:
        where = f"{machine.get('cpu_count')} CPUs, CPU model not recorded"
    versions = ", ".join(f"{k} {machine[k]}" for k in ("jax", "torch") if machine.get(k))
    return where + (f"; {versions}" if versions else "")


def stamp(table: Table, records: Sequence[dict[str, Any]]) -> str:
    """The line above a table: commit(s), date(s), machine(s), seed, provenance and the command that measured it."""
    dates: dict[tuple[str, str], list[str]] = {}
    for r in records:
        commit = f"`{measured_commit(r['machine']) or 'unknown'}`" + (
            " plus uncommitted library changes" if r["machine"].get("git_dirty") else "")
        days = dates.setdefault((commit, machine_stamp(r)), [])
        days += [] if r["machine"]["date"][:10] in days else [r["machine"]["date"][:10]]
    parts = [f"commit {commit}, {' and '.join(days)}, {where}" for (commit, where), days in dates.items()]
    # The bench scripts fix seed 0 for weights and batches; a record whose config has a seed says so.
    seeds = sorted({str(r["config"].get("seed", 0)) for r in records})
    notes = "".join(dict.fromkeys(f" {r['provenance'][0].upper()}{r['provenance'][1:]}." for r in records
                                  if r.get("provenance")))
    seed = f"; seed {', '.join(seeds)}" if table.seeded else ""
    return (f"<sub>Measured at {'; '.join(parts)}{seed}.{notes} Command: `{table.command}`; "
            f"rendered from `{table.source}` by `python -m bench.render`.</sub>")


def rendered(table: Table, records: list[dict[str, Any]]) -> str:
    """The full text between a table's markers."""
    chosen = table.select(records)
    if not chosen and table.pending:
        return f"_Not yet measured. Command: `{table.command}`, then `python -m bench.render`._\n\n"
    if not chosen:
        raise ValueError(f"table {table.name!r}: no record in {table.source} matches")
    try:
        return stamp(table, chosen) + "\n\n" + table.render(chosen).rstrip("\n") + "\n\n"
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"table {table.name!r}: a record in {table.source} lacks or mistypes a field ({e!r})") from e


def stale_paths(commit: str, depends: Sequence[str], root: str = ROOT) -> list[str] | None:
    """Files under ``depends`` that differ between ``commit`` and the working tree; None if git cannot tell."""
    if not commit:
        return None
    r = subprocess.run(["git", "diff", "--name-only", commit, "--", *depends], cwd=root, capture_output=True,
                       text=True)
    return None if r.returncode else [line for line in r.stdout.splitlines() if line]


def staleness_warnings(table: Table, records: list[dict[str, Any]], root: str = ROOT) -> list[str]:
    """One warning per commit of this table whose library code has changed since (or cannot be checked)."""
    out = []
    for commit in dict.fromkeys(measured_commit(r["machine"]) for r in table.select(records)):
        changed = stale_paths(commit, table.depends, root)
        if changed is None:
            out.append(f"warning: table {table.name} ({table.doc}): cannot check commit {commit or '(none)'} "
                       f"against the tree; re-measure with `{table.command}`")
        elif changed:
            shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
            out.append(f"warning: table {table.name} ({table.doc}) is stale: measured at {commit}, since then "
                       f"changed: {shown}; re-measure with `{table.command}`")
    return out


def apply(text: str, bodies: dict[str, str], doc: str) -> str:
    """``text`` with each marked block's body replaced by ``bodies[name]``; unknown markers are an error."""
    def swap(m: re.Match) -> str:
        name = m.group("name")
        if name not in bodies:
            raise ValueError(f"{doc}: marker table:{name} names no table in bench/tables.py")
        return m.group(1) + bodies[name] + m.group(4)

    return _BLOCK.sub(swap, text)


def render_docs(root: str = ROOT, tables: Sequence[Table] | None = None) -> dict[str, tuple[str, str]]:
    """{doc: (current text, rendered text)} for every doc that holds a table."""
    tables = TABLES if tables is None else tables
    out = {}
    for doc in sorted({t.doc for t in tables}):
        with open(os.path.join(root, doc)) as f:
            text = f.read()
        mine = [t for t in tables if t.doc == doc]
        bodies = {t.name: rendered(t, _records(t, root, load_records)) for t in mine}
        missing = [t.name for t in mine if f"<!-- table:{t.name} -->" not in text]
        if missing:
            raise ValueError(f"{doc}: no <!-- table:NAME --> marker for {', '.join(missing)}")
        out[doc] = (text, apply(text, bodies, doc))
    return out


def _records(table: Table, root: str, load: Callable[[str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The records of a table's source; none for a pending table whose source does not exist yet."""
    path = os.path.join(root, table.source)
    return [] if table.pending and not os.path.exists(path) else load(path)


def main(argv: list[str] | None = None) -> int:
    """Rewrites (or with --check, compares) the docs' tables; prints staleness warnings to stderr."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if any doc differs from the rendered tables")
    p.add_argument("--root", default=ROOT, help="repository root (default: this checkout)")
    args = p.parse_args(argv)
    try:
        docs = render_docs(args.root)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for t in TABLES:
        for w in staleness_warnings(t, _records(t, args.root, load_records), args.root):
            print(w, file=sys.stderr)
    differ = [doc for doc, (old, new) in docs.items() if old != new]
    if args.check:
        for doc in differ:
            print(f"{doc}: tables differ from the results files; run `python -m bench.render`", file=sys.stderr)
        return 1 if differ else 0
    for doc in differ:
        with open(os.path.join(args.root, doc), "w") as f:
            f.write(docs[doc][1])
        print(f"rewrote the tables in {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
