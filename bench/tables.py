"""The measured tables of the docs (BENCHMARKS.md, docs/*.md): which records each is made from, and how.

To add a table: write a ``render_*`` function, add a ``Table`` to ``TABLES`` and put
``<!-- table:NAME -->`` / ``<!-- /table -->`` where it goes in the doc, then ``python -m bench.render``.
``depends`` are git pathspecs of the code the numbers measure; keep them coarse (directories, not
files) so that modules moving inside ``bsft_jax`` do not need edits here.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

RESULTS = "bench/results.jsonl"
DEMO_RESULTS = "bench/demo_results.json"
ABLATION_RESULTS = "bench/ablation_results.json"
LEARNING_CURVE_RESULTS = "bench/learning_curve.json"
# What the numbers measure: the library without its data package, and the bench harness itself.
LIBRARY = ("bsft_jax", ":(exclude)bsft_jax/data")
TARGET_LABELS = {"8xh100": "8x H100"}
MODEL_LABELS = {"qwen2_5_0_5b": "Qwen2.5-0.5B", "qwen2_5_1_5b": "Qwen2.5-1.5B", "llama3_2_1b": "Llama-3.2-1B"}
GiB = 1024**3


@dataclass(frozen=True)
class Table:
    """One rendered table: which doc holds it, what it is made from, what library code it depends on.

    ``depends`` are git pathspecs (directories, globs, ``:(exclude)...``) so that files moving inside
    a package do not break them. ``render`` gets the records ``select`` picked and returns Markdown.
    """

    name: str
    doc: str
    source: str
    select: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    render: Callable[[list[dict[str, Any]]], str]
    depends: tuple[str, ...]
    command: str
    seeded: bool = True  # False where nothing random enters the numbers (compile-only plans)
    pending: bool = False  # a table that may have no record yet: rendered as "not yet measured"


def load_records(path: str) -> list[dict[str, Any]]:
    """Records of a results file: JSON lines, or one JSON object / list of objects (``.json``)."""
    with open(path) as f:
        if path.endswith(".json"):
            data = json.load(f)
            return data if isinstance(data, list) else [data]
        return [json.loads(line) for line in f if line.strip()]


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _spread(s: dict[str, float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(s['min'])}-{fmt.format(s['max'])}"


def _bench(name: str, **config: Any):
    """A selector: records of bench ``name`` whose config has these values, in file order."""
    def select(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if r["bench"] == name and all(r["config"].get(k) == v for k, v in config.items())]
    return select


def _newest(select):
    return lambda records: select(records)[-1:]


def _newest_per_size(select, *keys: str):
    """The newest selected record of each ``config.size`` (and of each value of ``config[k]`` for
    ``keys``), in file order."""
    def key(r: dict[str, Any]) -> tuple:
        return (r["config"]["size"], *(r["config"].get(k) for k in keys))

    def pick(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        newest = {key(r): r for r in select(records)}
        return [r for r in select(records) if newest[key(r)] is r]
    return pick


def _latest_session(select):
    """The selected records measured in the same session (commit and note) as the newest one."""
    def session(r: dict[str, Any]) -> tuple[str, str]:
        return str(r["machine"].get("git")), str(r["machine"].get("note", ""))

    def pick(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        chosen = select(records)
        return [r for r in chosen if session(r) == session(chosen[-1])] if chosen else []
    return pick


def _cpu_decode(*sizes: str):
    """CPU decode records of these model sizes."""
    return lambda records: [r for r in _backend("decode", "cpu")(records) if r["config"]["size"] in sizes]


def _gpu_mfu(round2: bool):
    """gpu_mfu records of the round-2 session (a ``loss_impl`` in the config: bench/gpu_round2.sh) or of the others."""
    return lambda records: [r for r in _bench("gpu_mfu")(records) if ("loss_impl" in r["config"]) == round2]


def _backend(name: str, backend: str):
    return lambda records: [r for r in _bench(name)(records) if r["results"].get("backend", "cpu") == backend]


# -- plan --------------------------------------------------------------------------------------------------

def plan_table_markdown(record: dict[str, Any]) -> str:
    """The planner table of one ``plan_table`` record (GiB per device)."""
    compilers = record["config"]["compilers"]
    header = ["model", "slice (devices, HBM each)", "mesh", "params", "AdamW m+v", "grads", "XLA temp"]
    header += [f"peak, {c.upper()} compiler" for c in compilers] + ["fits"]
    rows = []
    for row in record["results"]["rows"]:
        a, mesh, main = row["analytic"], row["mesh"], row["main_compiler"]
        mesh_text = f"fsdp={mesh['fsdp']}" + (f" tensor={mesh['tensor']}" if mesh["tensor"] > 1 else "")
        temp = f"{row['xla'][main]['temp'] / GiB:.1f}" + (" (CPU)" if main == "cpu" and "tpu" in compilers else "")
        peaks = [_plan_peak(row["xla"].get(c)) for c in compilers]
        fits = ("yes" if row["fits"] else "NO") + ("*" if main == "cpu" and "tpu" in compilers else "")
        target = TARGET_LABELS.get(row["target"], row["target"])
        rows.append([row["model"], f"{target} ({row['num_devices']}, {row['hbm_bytes_per_device'] / GiB:.0f} GiB)",
                     mesh_text, f"{a['params'] / GiB:.2f}", f"{a['opt_state'] / GiB:.2f}",
                     f"{a['gradients'] / GiB:.2f}", temp, *peaks, fits])
    return markdown(header, rows)


def _plan_peak(xla: dict[str, Any] | None) -> str:
    """One compiler's peak (GiB), "-" when not planned, "out of HBM" when the compiler refused the step."""
    if not xla:
        return "-"
    return "out of HBM" if xla["peak"] is None else f"{xla['peak'] / GiB:.1f}"


def render_plan(records: list[dict[str, Any]]) -> str:
    return plan_table_markdown(records[-1])


# -- CPU train step, profile, decode, compile time, memory ----------------------------------------------

_MAIN_TRAIN = _bench("train_step", blocks=5, unroll="1,full", torch_attn="sdpa", torch_adamw="fused")


def _train_rows(record: dict[str, Any]) -> list[list[Any]]:
    r, size = record["results"], record["config"]["size"]
    rows = []
    for key, v in r["bsft"].items():
        how = "scanned, scan_unroll=1" if key == "1" else "unrolled"
        ratio = v["ratio_over_torch"]
        rows.append([f"{size}: bsft_jax Trainer step ({how})", f"{v['tokens_per_s']['median']:.0f}",
                     _spread(v["tokens_per_s"]), f"{statistics.median(v['seconds_per_step']):.3f}",
                     f"{ratio['median']:.2f} ({_spread(ratio, '{:.2f}')})", f"compile {v['compile_seconds']:.1f} s"])
    torch = r["torch"]
    rows.append([f"{size}: transformers + torch eager ({torch['attn_implementation']}, AdamW {torch['adamw']})",
                 f"{r['torch_tokens_per_s']['median']:.0f}", _spread(r["torch_tokens_per_s"]),
                 f"{statistics.median(r['torch_seconds_per_step']):.3f}", "1", f"{torch['threads']} threads"])
    return rows


def render_train_step(records: list[dict[str, Any]]) -> str:
    """One table per run (a run: the sizes measured one after another), as BENCHMARKS.md shows them."""
    runs: list[list[dict[str, Any]]] = []
    for rec in records:
        if not runs or rec["config"]["size"] in {r["config"]["size"] for r in runs[-1]}:
            runs.append([])
        runs[-1].append(rec)
    header = ["implementation", "tokens/s (median)", "min-max", "s/step (median)", "ratio vs torch (min-max)", "notes"]
    out = []
    for i, run in enumerate(runs, 1):
        sizes = " then ".join(r["config"]["size"] for r in run)
        out.append(f"Run {i} ({sizes}, {run[0]['machine']['date'][11:16]}-{run[-1]['machine']['date'][11:16]}):\n")
        out.append(markdown(header, [row for rec in run for row in _train_rows(rec)]))
    shapes = "; ".join(dict.fromkeys(f"{c['size']}: batch {c['batch']} x {c['seq']} tokens"
                                     for c in (r["config"] for r in records)))
    loads = [r["results"]["load_avg_start"] for r in records]
    out.append(f"({shapes}; load average at start {min(loads):.2f}-{max(loads):.2f}.)\n")
    return "\n".join(out)


def render_profile(records: list[dict[str, Any]]) -> str:
    r = records[-1]["results"]
    flops = r["model_flops_per_step"]
    rows = []
    # "other": the profiled ops that are not matmuls (XLA thunks on our side; the step minus matmuls for torch).
    for label, side, profiled in (("bsft_jax step", r["bsft"], r["bsft"]["thunk_s"]),
                                  ("torch loop", r["torch"], r["torch"]["step_s"])):
        other = profiled - side["matmul_s"]
        rows.append([label, f"{side['step_s'] * 1e3:.0f}", f"{side['matmul_s'] * 1e3:.0f}",
                     f"{flops / side['matmul_s'] / 1e9:.0f}", f"{other * 1e3:.0f}"])
    return markdown(["loop", "step ms", "matmul ms", "matmul GFLOP/s", "other ms"], rows)


def _decode_rows(record: dict[str, Any], number: str, with_model: bool) -> list[list[Any]]:
    r = record["results"]
    model = [record["config"]["size"]] if with_model else []
    ratio = r["ratio_bsft_over_torch"]
    ratio_text = f"{ratio['median']:.2f}" if ratio["median"] < 5 else f"**{ratio['median']:.1f}x**"
    return [
        [*model, "bsft_jax Sampler (jit prefill + while_loop)", number.format(r["bsft_tokens_per_s"]["median"]),
                 _spread(r["bsft_tokens_per_s"], number),
                 f"first call {r['bsft_first_call_seconds']:.1f} s (compile {r['bsft_compile_seconds']:.1f} s)"],
        [*model, "transformers generate (torch eager, KV cache)", number.format(r["torch_tokens_per_s"]["median"]),
                 _spread(r["torch_tokens_per_s"], number),
                 f"{r['torch_threads']} threads" if r["backend"] == "cpu" else ""],
        [*model, "ratio bsft/torch (per pair)", ratio_text,
                 _spread(ratio, "{:.2f}" if ratio["median"] < 5 else "{:.1f}"), f"{ratio['n']} pairs"],
    ]


def render_decode(records: list[dict[str, Any]]) -> str:
    rows = [row for rec in records for row in _decode_rows(rec, "{:.0f}", True)]
    return markdown(["model", "implementation", "generated tokens/s (median)", "min-max", "notes"], rows)


def render_round2_train(records: list[dict[str, Any]]) -> str:
    """bench.round2 train: full-logits loss ("before"), chunked loss ("after") and torch, interleaved."""
    labels = {"full": "bsft_jax, full [B, T, V] loss (before)", "chunked": "bsft_jax, chunked loss (after)",
              "torch": "transformers + torch eager"}
    rows = []
    for rec in records:
        cfg, res = rec["config"], rec["results"]
        shape = f"{cfg['size']}, {cfg['batch']} x {cfg['seq']}, loss on ~{cfg['loss_fraction']:.0%}"
        for impl in cfg["impls"].split(","):
            r = res[impl]
            ratio = r.get("ratio_over_torch")
            rows.append([shape, labels.get(impl, impl), f"{r['tokens_per_s']['median']:.0f}",
                         _spread(r["tokens_per_s"]), f"{statistics.median(r['seconds_per_step']):.2f}",
                         f"**{ratio['median']:.2f}x** ({_spread(ratio, '{:.2f}')})" if ratio else "1"])
        rows.append([shape, "load average (start / end)", f"{res['load_avg_start']:.2f} / {res['load_avg_end']:.2f}",
                     "", "", ""])
    return markdown(["model, batch, SFT mask", "implementation", "tokens/s (median)", "min-max", "s/step",
                     "vs torch (per block)"], rows)


def render_round2_memory(records: list[dict[str, Any]]) -> str:
    """bench.round2 memory: peak RSS above the post-import baseline, one fresh process per implementation."""
    rows = []
    for rec in records:
        cfg, res = rec["config"], rec["results"]
        torch_mb = res.get("torch", {}).get("extra_mb")
        for impl in cfg["impls"].split(","):
            r = res[impl]
            xla = f"{r['xla_total_mb']:.0f} (temp {r['xla_temp_mb']:.0f})" if "xla_total_mb" in r else "-"
            rows.append([f"{cfg['size']}, {cfg['batch']} x {cfg['seq']}, remat {cfg['remat']}", impl,
                         f"{r['extra_mb']:.0f}", f"**{r['extra_mb'] / torch_mb:.2f}x**" if torch_mb else "-", xla])
    return markdown(["model, batch", "implementation", "peak RSS above baseline, MB", "vs torch",
                     "XLA step plan MB"], rows)


def render_gpu_decode(records: list[dict[str, Any]]) -> str:
    rows = [row for rec in records for row in _decode_rows(rec, "{:,.0f}", False)]
    return markdown(["implementation", "generated tokens/s (median)", "min-max", "notes"], rows)


def render_compile_time(records: list[dict[str, Any]]) -> str:
    rows = []
    for row in records[-1]["results"]["rows"]:
        cells = [row["train_compile_s"], row["train_unrolled_compile_s"], row["decode_compile_s"]]
        rows.append([row["model"], row["layers"], row["hidden"], f"{row['batch']}x{row['seq']}",
                     *("-" if c is None else f"{c:.2f}" for c in cells)])
    return markdown(["model", "layers", "hidden", "train batch", "train step s (scan)", "train step s (unrolled)",
                     "decode s"], rows)


MEMORY_NOTES = {"torch_load": "weights left memory-mapped, read on first use"}


def render_memory(records: list[dict[str, Any]]) -> str:
    r = records[-1]["results"]
    ops = [("train: bsft_jax Trainer (jit, donated)", "train_bsft", r["train_bsft"]),
           ("train: transformers + torch", "train_torch", r["train_torch"])]
    ops += [(f"HF {k}", k, r["hf_io"][k]) for k in ("bsft_load", "torch_load", "bsft_save") if k in r.get("hf_io", {})]
    rows = []
    for label, key, v in ops:
        model_mb = v.get("model_fp32_mb", r.get("hf_io", {}).get("model_fp32_mb"))
        note = f"XLA plan {v['xla_step_total_mb']:.0f} MB" if "xla_step_total_mb" in v else MEMORY_NOTES.get(key, "")
        rows.append([label, f"{model_mb:.0f}", f"{v['extra_mb']:.0f}", f"{v['extra_over_model']:.2f}x",
                     f"{v['seconds']:.3g}", note])
    return markdown(["operation", "model MB", "peak extra MB", "x model", "seconds", "notes"], rows)


LORA_LABELS = {"jax-full": "bsft_jax full fine-tuning", "jax-lora": "bsft_jax LoRA (+ behavior rows)",
               "peft-lora": "transformers + peft LoRA (+ trainable tokens)",
               "torch-full": "transformers full fine-tuning"}


def render_lora(records: list[dict[str, Any]]) -> str:
    """LoRA vs full fine-tuning (bsft_jax) vs transformers + peft: step time (interleaved) and peak memory.

    The table shows the newest record on the real SmolLM2-135M (``--hf_path builtin:smollm2-135m-instruct``).
    """
    rec = records[-1]
    res, cfg = rec["results"], rec["config"]
    ref = res["impls"].get("jax-full", {}).get("seconds_per_step", {}).get("median")
    rows = []
    for impl, r in res["impls"].items():
        s = r["seconds_per_step"]
        xla = f"{r['xla_bytes'] / 2**20:.0f}" if r.get("xla_bytes") else "-"
        rows.append([LORA_LABELS.get(impl, impl), f"{r['trainable']:,}", f"{s['median']:.3f} ({_spread(s, '{:.3f}')})",
                     f"{ref / s['median']:.2f}x" if ref else "-",
                     f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") is not None else "-", xla])
    head = (f"{os.path.basename(str(cfg['hf_path']).rstrip('/'))}, fp32, batch {cfg['batch']} x {cfg['seq']}, "
            f"LoRA rank {cfg['rank']} (alpha {cfg['alpha']:g}) on {cfg['targets']}, "
            f"{cfg['rows']} trainable token rows; "
            f"{cfg['blocks']} interleaved blocks of {cfg['steps']} steps; load average "
            f"{res['load_avg_start']:.2f} at start, {res['load_avg_end']:.2f} at the end.\n\n")
    return head + markdown(["implementation", "trainable params", "s/step median (min-max)", "speed vs bsft_jax full",
                            "peak RSS MB", "XLA step MB"], rows)


def render_real_model(records: list[dict[str, Any]]) -> str:
    """bench.real_model: train-step and greedy-decode tokens/s on the real SmolLM2-135M, interleaved with torch."""
    rec = records[-1]
    res, cfg = rec["results"], rec["config"]
    rows = []
    for what, unit in (("train", f"train step, {cfg['batch']} x {cfg['seq_len']} tokens, AdamW"),
                       ("decode", f"greedy decode, 4 prompts x {cfg['new']} new tokens")):
        r = res[what]
        ratio = r["ratio_bsft_over_torch"]
        ours, theirs = r["bsft_tokens_per_s"], r["torch_tokens_per_s"]
        rows.append([unit, f"{ours['median']:.0f} ({_spread(ours)})", f"{theirs['median']:.0f} ({_spread(theirs)})",
                     f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"])
    head = (f"{cfg['model']}, fp32, {res['train'].get('torch_threads', '?')} torch threads; train: "
            f"{cfg['rounds']} interleaved blocks of {cfg['steps']} steps; decode: {cfg['repeats']} interleaved calls; "
            f"load average {res['load_avg_start'][0]:.2f} at start, {res['load_avg_end'][0]:.2f} at the end.\n\n")
    return head + markdown(["what", "bsft_jax tokens/s median (min-max)",
                            "transformers+torch tokens/s median (min-max)", "bsft_jax / torch (min-max)"], rows)


# -- GPU --------------------------------------------------------------------------------------------------

def render_gpu_mfu(records: list[dict[str, Any]]) -> str:
    rows = []
    for rec in records:
        for row in rec["results"]["rows"]:
            step, mfu, bsft = row["step_seconds"], row["mfu"], row["impl"].startswith("bsft")
            share = f"{mfu['median'] * 100:.1f}%"
            rows.append([MODEL_LABELS.get(row["model"], row["model"]), row["impl"], f"{row['batch']}x{row['seq']}",
                         row["remat"], f"{step['median']:.3f}", f"{row['tokens_per_s']:,.0f}",
                         f"{row['model_flops_per_step'] / step['median'] / 1e12:.1f}",
                         (f"**{share}**" if bsft else share) + f" ({_spread(mfu, '{:.1%}').replace('%', '')})",
                         f"{row['peak_device_gb']:.1f}", f"{row['compile_seconds']:.1f}" if bsft else "-"])
    return markdown(["model", "implementation", "batch", "remat", "s/step", "tokens/s", "model TFLOP/s",
                     "MFU (min-max)", "peak GPU GB", "compile s"], rows)


# -- demo -------------------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def render_demo(records: list[dict[str, Any]]) -> str:
    """The `make demo` comparison: macro-F1 per group and overall, behavior selection, intervention rates."""
    rec = records[-1]["results"]
    columns = [(k, label) for k, label in (("few_shot", "few-shot (k=3)"), ("explicit_instruction",
               "explicit instruction"), ("generalsft", "GeneralSFT"), ("behaviorsft", "BehaviorSFT")) if k in rec]
    runs = [rec[k] for k, _ in columns]
    groups = (("reactive", "reactive (4 multiple-choice categories)"),
              ("balanced", "balanced (4 categories: flag or hold back)"), ("proactive", "proactive (5 categories)"))
    rows = [[label, *(_pct(r["macro_f1_pct"][key]) for r in runs)] for key, label in groups]
    rows.append(["**overall**", *(f"**{_pct(r['macro_f1_pct']['overall'])}**" for r in runs)])
    rows.append(["behavior-selection accuracy", *(
        "n/a" if r["behavior_accuracy_pct"] is None
        else f"{_pct(r['behavior_accuracy_pct'])} (majority class: {_pct(r['behavior_majority_pct'])})" for r in runs)])
    if any("decision_accuracy_pct" in r for r in runs):
        rows.append(["**intervene-vs-hold accuracy** (open scenes; chance 50)",
                     *(f"**{_pct(r['decision_accuracy_pct'])}**" if "decision_accuracy_pct" in r else "-"
                       for r in runs)])
    rows.append(["over-intervention / missed-intervention rate",
                 *(f"{_pct(r['over_intervention_pct'])} / {_pct(r['missed_intervention_pct'])}" for r in runs)])
    if any("items" in r for r in runs):
        rows.append(["test scenes (open)", *(f"{r['items']} ({r.get('open_items', '-')})" if "items" in r else "-"
                                             for r in runs)])
    wall = rec.get("wall_seconds")
    tail = f"\nWall time of the whole `make demo`: {wall / 60:.0f} min.\n" if wall else ""
    stages = rec.get("stage_seconds")
    if stages:
        tail += "\nStages (`runs/demo_report/stages.json`): " + "; ".join(
            f"{name} {int(s) // 60}m{int(s) % 60:02d}s" for name, s in stages.items()) + ".\n"
    probe = rec.get("steering_probe_pct")
    if probe:
        tail += "\nSteering probe (BehaviorSFT, each token forced; % of open items with a flag / 'none', " \
                "% unparsed): " + "; ".join(f"{b}: {r['flag_rate']} / {r['none_rate']} / {r['unparsed_rate']}"
                                            for b, r in probe.items()) + ".\n"
    return markdown(["macro-F1 (%)", *(label for _, label in columns)], rows) + tail


def render_demo_decisions(records: list[dict[str, Any]]) -> str:
    """The `make demo` fine-tunes' intervene-vs-hold accuracy per open category."""
    rec = records[-1]["results"]
    arms = [(k, label) for k, label in (("generalsft", "GeneralSFT"), ("behaviorsft", "BehaviorSFT"))
            if "decision_per_category_pct" in rec.get(k, {})]
    cats = sorted({c for k, _ in arms for c in rec[k]["decision_per_category_pct"]})
    rows = [[c, *(_pct(rec[k]["decision_per_category_pct"].get(c)) for k, _ in arms)] for c in cats]
    return markdown(["intervene-vs-hold accuracy (%), open test scenes", *(label for _, label in arms)], rows)


def _with_decisions(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest demo record if it has per-category decisions (records before demo recipe v3 have none)."""
    return [r for r in records[-1:] if any(isinstance(v, dict) and "decision_per_category_pct" in v
                                           for v in r["results"].values())]


def render_learning_curve(records: list[dict[str, Any]]) -> str:
    """bench/learning_curve.py: intervene-vs-hold accuracy and macro-F1 per arm against tokens seen."""
    rec = records[-1]
    rows = []
    for arm, res in rec["results"]["arms"].items():
        for p in res["points"]:
            rows.append([arm, p["step"], f"{p['tokens']:,}", _frac(p["decision_accuracy"]),
                         _frac(p["missed_intervention"]), _frac(p["over_intervention"]), _frac(p["overall_f1"])])
    split = sorted({res.get("split", "test") for res in rec["results"]["arms"].values()})
    items = sorted({res.get("eval_items") or rec["config"].get("eval_items") for res in rec["results"]["arms"].values()}
                   - {None})
    cross = "; ".join(f"{arm}: " + ", ".join(f"{th} at {'step ' + str(c['step']) if c else 'never'}"
                                             for th, c in res["crossings"].items())
                      for arm, res in rec["results"]["arms"].items())
    return markdown(["arm", "step", "tokens seen", "intervene-vs-hold acc. (%)", "missed (%)", "over (%)",
                     "overall macro-F1 (%)"], rows) + (
        f"\nMeasured on the {'/'.join(split)} split ({', '.join(map(str, items))} scenes, categories in turn; "
        f"chance 50%). First evaluation at or above 70% / 80% intervene-vs-hold accuracy: {cross}.\n")


def _frac(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def render_ablation(records: list[dict[str, Any]]) -> str:
    """The seeded ablation: macro-F1 mean ± std over seeds per scheme and arm, and the paired bootstrap CIs."""
    rec = records[-1]
    rows = []
    for scheme in rec["config"]["schemes"]:
        r = rec["results"][scheme]
        for arm in ("GeneralSFT", "BehaviorSFT"):
            f1 = r["macro_f1"][arm]
            rows.append([scheme, arm, *(f"{100 * f1[k]['mean']:.1f} ± {100 * f1[k]['std']:.1f}" if k in f1 else "n/a"
                                        for k in ("reactive", "balanced", "proactive", "overall"))])
        cis = [f"{100 * c['mean']:+.1f} [{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]"
               for c in (r["diff_ci"]["proactive"], r["diff_ci"]["overall"])]
        rows.append([scheme, "**BehaviorSFT - GeneralSFT** (95% CI)", "", "", *cis])
    seeds = ", ".join(map(str, rec["config"]["seeds"]))
    items = rec["results"][rec["config"]["schemes"][0]]["test_items"]
    return markdown(["scheme", "arm", "reactive", "balanced", "proactive", "overall"], rows) + (
        f"\nmacro-F1 (%) mean ± sample std over seeds {seeds}; {items} test items; "
        f"wall time {rec['results']['wall_seconds'] / 3600:.1f} h (runs reused from an earlier invocation "
        f"not counted).\n") + _ablation_rates(rec)


def _ablation_rates(rec: dict[str, Any]) -> str:
    """Per scheme and seed: missed / over-intervention (%) of both arms and BehaviorSFT's token accuracy."""
    rows = []
    for scheme in rec["config"]["schemes"]:
        rates = rec["results"][scheme].get("rates_per_seed")
        if not rates:
            continue
        pct = lambda v: "n/a" if v is None else f"{100 * v:.0f}"  # noqa: E731
        for arm in ("GeneralSFT", "BehaviorSFT"):
            rows.append([scheme, arm, " / ".join(pct(r["missed_intervention"]) for r in rates[arm]),
                         " / ".join(pct(r["over_intervention"]) for r in rates[arm]),
                         " / ".join(pct(r["behavior_accuracy"]) for r in rates[arm])
                         if arm == "BehaviorSFT" else ""])
    if not rows:
        return ""
    seeds = " / ".join(map(str, rec["config"]["seeds"]))
    return "\n" + markdown(["scheme", "arm", f"missed-intervention % (seed {seeds})", "over-intervention %",
                            "behavior-token accuracy %"], rows)


# The memory planner (train/plan*.py) is run by no timing bench, the demo or the ablation: only the plan table.
PLANNER = ":(exclude)bsft_jax/train/plan*.py"


def _deps(*scripts: str) -> tuple[str, ...]:
    """The library (less the planner) plus the bench files that set up what a timing table measures."""
    return (*LIBRARY, PLANNER, "bench/train_setup.py", *scripts)



TABLES = [
    Table("plan", "docs/training.md", RESULTS, _newest(_bench("plan_table")), render_plan,
          (*LIBRARY, "configs/qwen2_5_7b_*", "configs/llama3_1_8b_*"),
          "python -m bench.plan_table", seeded=False),
    Table("train-step", "BENCHMARKS.md", RESULTS, _latest_session(_MAIN_TRAIN), render_train_step,
          _deps("bench/train_step.py"),
          "python -m bench.train_step --size 100m; python -m bench.train_step --size demo"),
    Table("profile", "BENCHMARKS.md", RESULTS, _newest(_bench("profile_step", size="100m", threads=1)),
          render_profile, _deps("bench/profile_step.py"), "python -m bench.profile_step --size 100m --threads 1"),
    Table("decode", "BENCHMARKS.md", RESULTS,
          _latest_session(_cpu_decode("demo", "100m")), render_decode,
          _deps("bench/decode.py"), "python -m bench.decode --size demo; python -m bench.decode --size 100m"),
    Table("compile-time", "BENCHMARKS.md", RESULTS, _newest(_bench("compile_time")), render_compile_time,
          _deps("bench/compile_time.py"), "python -m bench.compile_time"),
    Table("memory", "BENCHMARKS.md", RESULTS, _newest(_bench("memory", size="100m")), render_memory,
          _deps("bench/memory.py"),
          "python -m bench.memory --size 100m"),
    Table("gpu-mfu", "BENCHMARKS.md", RESULTS, _latest_session(_gpu_mfu(False)), render_gpu_mfu,
          _deps("bench/gpu_mfu.py"),
          "bench/gpu_session.sh OUT final"),
    Table("gpu-mfu-round2", "BENCHMARKS.md", RESULTS, _latest_session(_gpu_mfu(True)), render_gpu_mfu,
          _deps("bench/gpu_mfu.py", "bench/gpu_round2.sh"),
          "bench/gpu_round2.sh OUT"),
    Table("gpu-decode", "BENCHMARKS.md", RESULTS,
          _newest(_backend("decode", "gpu")), render_gpu_decode,
          _deps("bench/decode.py"), "python -m bench.decode --size qwen2_5_0_5b --dtype bfloat16"),
    Table("round2-train", "BENCHMARKS.md", RESULTS, _newest_per_size(_bench("round2_train"), "impls"),
          render_round2_train, _deps("bench/round2.py", "bench/train_step.py"),
          "python -m bench.round2 train --size smollm2_135m --batch 4 --seq 512 --blocks 3 "
          "(and --size qwen2_5_0_5b --batch 1 --impls chunked,torch, then --impls full,torch)", pending=True),
    Table("round2-decode", "BENCHMARKS.md", RESULTS,
          _newest(_cpu_decode("smollm2_135m")), render_decode, _deps("bench/decode.py"),
          "python -m bench.round2 decode --size smollm2_135m --batch 8 --new 128 --blocks 5", pending=True),
    Table("round2-memory", "BENCHMARKS.md", RESULTS, _newest_per_size(_bench("round2_memory")),
          render_round2_memory, _deps("bench/round2.py"),
          "python -m bench.round2 memory --size qwen2_5_0_5b --batch 4 --seq 512 (and --size smollm2_135m)",
          pending=True),
    Table("lora", "BENCHMARKS.md", RESULTS, _newest(lambda rs: [r for r in _bench("lora")(rs)
                                                                if "smollm2" in str(r["config"].get("hf_path"))]),
          render_lora, _deps("bench/lora.py"),
          "python -m bench.lora --hf_path builtin:smollm2-135m-instruct --blocks 2 --steps 2", pending=True),
    Table("real-model", "BENCHMARKS.md", RESULTS, _newest(_bench("real_model")), render_real_model,
          _deps("bench/real_model.py"), "python -m bench.real_model"),
    Table("demo", "docs/evaluation.md", DEMO_RESULTS, lambda rs: rs[-1:], render_demo,
          ("bsft_jax", PLANNER, "configs/demo*.py"), "make demo; python -m bench.demo_results"),
    Table("demo-decisions", "docs/evaluation.md", DEMO_RESULTS, _with_decisions, render_demo_decisions,
          ("bsft_jax", PLANNER, "configs/demo*.py"), "make demo; python -m bench.demo_results", pending=True),
    Table("learning-curve", "docs/evaluation.md", LEARNING_CURVE_RESULTS, lambda rs: rs[-1:], render_learning_curve,
          ("bsft_jax", PLANNER, "configs/demo*.py", "bench/learning_curve.py"), "python -m bench.learning_curve",
          pending=True),
    Table("ablation", "docs/evaluation.md", ABLATION_RESULTS, lambda rs: rs[-1:], render_ablation,
          ("bsft_jax", PLANNER, "configs/demo*.py", "bench/ablation.py"), "make ablation", pending=True),
]
