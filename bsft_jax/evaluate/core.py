"""BehaviorBench evaluation core: decode test items, read the behavior token and the label, score, report.

The core is model-free and testable with hand-made records: :func:`evaluate_records` takes the
records plus the few callables that tie it to a model and a tokenizer (render a prompt, generate,
detokenize, parse a reply, and optionally score continuations), and returns a :class:`EvalResult`.
:func:`write_comparison` writes several runs side by side (report.json, report.md, radar.png and
one predictions JSONL per run).

Records are duck-typed like ``bsft_jax.data.schema.Record``: ``id``, ``category``, ``label``,
``behavior``, ``options`` (tuple of (key, text) pairs or None) and ``is_multiple_choice``.

Scoring modes:
  ``generate``  the label is parsed from the generated reply (``parse_label(text, record)``; None =
                unparseable, which counts as wrong).
  ``loglik``    items with candidate labels (by default the options of multiple-choice items; with
                ``candidates`` e.g. also the flag classes of the category) are re-scored by ranking
                those labels by the log-likelihood of the reply head that states each one
                (``candidate_ids``), given the prompt and the behavior token the model chose; items
                without candidates are parsed as above.
In both modes the reply is generated once, so the behavior token and decode throughput are measured.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from jax.sharding import Mesh

from bsft_jax import storage
from bsft_jax.behavior.spec import BehaviorSpec
from bsft_jax.data.format import FewShotPool, Formatter
from bsft_jax.data.reply import candidate_labels, parse_label, reply_head
from bsft_jax.data.schema import Record, record_from_dict
from bsft_jax.decode.sampler import Sampler, SamplerOutput
from bsft_jax.decode.scoring import continuation_logprobs
from bsft_jax.errors import UserError
from bsft_jax.evaluate.metrics import UNPARSED, ScoredItem, compute_metrics
from bsft_jax.evaluate.report import write_report
from bsft_jax.files import atomic_write
from bsft_jax.models.decoder import Decoder

MODES = ("generate", "loglik")


class RecordLike(Protocol):
    id: str
    category: str
    label: str
    behavior: str
    options: tuple[tuple[str, str], ...] | None

    @property
    def is_multiple_choice(self) -> bool: ...


GenerateFn = Callable[..., SamplerOutput]  # (prompts, *, force_first_token=None) -> SamplerOutput
ScoreFn = Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], Sequence[float]]


@dataclasses.dataclass
class EvalResult:
    """One evaluated run: the scored items, their metrics and facts about the run (throughput...)."""

    name: str
    items: list[ScoredItem]
    metrics: dict[str, Any]
    info: dict[str, Any]

    def predictions(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per item (what ``predictions_<run>.jsonl`` holds)."""
        return [dataclasses.asdict(i) for i in self.items]


def split_reply(
    tokens: Sequence[int], behavior_token_ids: Mapping[str, int] | None, eos_ids: Sequence[int] = ()
) -> tuple[str | None, list[int]]:
    """(behavior name, reply ids) of one generation.

    The behavior is the name of the first token when it is a behavior token, :data:`UNPARSED` when
    the run uses behavior tokens but the reply does not start with one, and None for runs without
    them. Reply ids exclude that token and a final EOS.
    """
    body = list(tokens)
    if body and body[-1] in set(eos_ids):
        body = body[:-1]
    if behavior_token_ids is None:
        return None, body
    names = {tid: name for name, tid in behavior_token_ids.items()}
    if body and body[0] in names:
        return names[body[0]], body[1:]
    return UNPARSED, body


def evaluate_records(
    records: Sequence[RecordLike],
    *,
    name: str,
    prompt_ids: Callable[[RecordLike], list[int]],
    generate: GenerateFn,
    detokenize: Callable[[list[int]], str],
    parse_label: Callable[[str, RecordLike], str | None],
    behavior_token_ids: Mapping[str, int] | None = None,
    eos_ids: Sequence[int] = (),
    mode: str = "generate",
    score_continuations: ScoreFn | None = None,
    candidate_ids: Callable[[RecordLike, str], list[int]] | None = None,
    candidates: Callable[[RecordLike], Sequence[str]] | None = None,
    force_behavior: str | None = None,
    label_sets: Mapping[str, Sequence[str]] | None = None,
) -> EvalResult:
    """Generates a reply for every record and scores the run.

    name:                run name (a report column).
    prompt_ids:          record -> prompt token ids ending with the assistant-turn header.
    generate:            ``generate(prompts, force_first_token=None) -> SamplerOutput`` (e.g. a bound
                         :class:`bsft_jax.decode.Sampler`).
    detokenize:          reply ids -> text (behavior token and EOS already removed).
    parse_label:         (reply text, record) -> label, or None when unparseable.
    behavior_token_ids:  behavior name -> token id for runs whose replies start with a behavior token
                         (BehaviorSFT); None for runs without (baselines): behavior metrics are n/a.
    eos_ids:             ids that end a reply (dropped before detokenizing).
    mode:                "generate" or "loglik" (see the module doc); "loglik" needs
                         ``score_continuations(prefixes, continuations) -> log-likelihoods`` and
                         ``candidate_ids(record, label) -> ids of a reply head stating label``;
                         ``candidates(record) -> labels to rank`` (default: option keys of
                         multiple-choice records, none for others).
    force_behavior:      force every reply to start with this behavior's token (steering probe).
    label_sets:          category -> labels for macro-F1 (default: the gold labels seen).
    """
    force = _check_eval_request(mode, score_continuations, candidate_ids, force_behavior, behavior_token_ids)
    prompts = [prompt_ids(r) for r in records]
    out = generate(prompts, force_first_token=force)
    if len(out.tokens) != len(records):
        raise ValueError(f"evaluate: generate returned {len(out.tokens)} replies for {len(records)} prompts")

    behaviors, replies, labels = _read_replies(records, out.tokens, behavior_token_ids, eos_ids, detokenize,
                                               parse_label)
    if mode == "loglik":
        labels = _rank_candidates(records, prompts, behaviors, labels, behavior_token_ids, score_continuations,
                                  candidate_ids, candidates or _option_keys)

    items = [
        ScoredItem(id=str(r.id), category=r.category, gold_label=r.label, pred_label=label,
                   gold_behavior=r.behavior, pred_behavior=behavior, multiple_choice=bool(r.is_multiple_choice),
                   reply=text, hard=bool(getattr(r, "hard", False)))
        for r, label, behavior, text in zip(records, labels, behaviors, replies)
    ]
    info = _run_info(mode, len(items), out) | ({"forced behavior": force_behavior} if force_behavior else {})
    return EvalResult(name=name, items=items, metrics=compute_metrics(items, label_sets=label_sets), info=info)


def _read_replies(
    records: Sequence[RecordLike],
    reply_tokens: Sequence[Sequence[int]],
    behavior_token_ids: Mapping[str, int] | None,
    eos_ids: Sequence[int],
    detokenize: Callable[[list[int]], str],
    parse_label: Callable[[str, RecordLike], str | None],
) -> tuple[list[str | None], list[str], list[str | None]]:
    """Each reply's behavior (its first token), text (behavior token and EOS removed) and parsed label."""
    behaviors, replies, labels = [], [], []
    for record, tokens in zip(records, reply_tokens):
        behavior, body = split_reply(tokens, behavior_token_ids, eos_ids)
        text = detokenize(body)
        behaviors.append(behavior)
        replies.append(text)
        labels.append(parse_label(text, record))
    return behaviors, replies, labels


class EvalRequestError(UserError, ValueError):
    """An evaluation request the model or run cannot answer (unknown mode, a behavior it does not have)."""


def _check_eval_request(mode: str, score_continuations: ScoreFn | None, candidate_ids: Any,
                        force_behavior: str | None, behavior_token_ids: Mapping[str, int] | None) -> int | None:
    """Rejects an inconsistent request; returns the token id to force first (None: the model chooses)."""
    if mode not in MODES:
        raise EvalRequestError(f"evaluate: mode must be one of {MODES}, got {mode!r}")
    if mode == "loglik" and (score_continuations is None or candidate_ids is None):
        raise ValueError("evaluate: mode='loglik' needs score_continuations and candidate_ids")
    if force_behavior is None:
        return None
    check_force_behavior(force_behavior, behavior_token_ids or {})
    return behavior_token_ids[force_behavior]


def check_force_behavior(force_behavior: str, behaviors: Sequence[str] | Mapping[str, int]) -> None:
    """Raises :class:`EvalRequestError` unless ``force_behavior`` is one of the run's ``behaviors``."""
    if force_behavior not in behaviors:
        raise EvalRequestError(f"--force_behavior={force_behavior!r}: cannot force a behavior the run does not "
                               f"have; its behaviors are {sorted(behaviors)}: pass one of them")


def _run_info(mode: str, num_items: int, out: SamplerOutput) -> dict[str, Any]:
    """The report's facts about one run: sizes, decode speed, compile time."""
    return {
        "mode": mode,
        "items": num_items,
        "prompt tokens": out.num_prompt_tokens,
        "generated tokens": out.num_generated,
        "decode seconds": round(out.seconds, 3),
        "compile seconds": round(out.compile_seconds, 3),
        "decode tokens/s": round(out.tokens_per_second, 1),
    }


def _option_keys(record: RecordLike) -> tuple[str, ...]:
    return tuple(k for k, _ in record.options) if record.is_multiple_choice else ()


def _rank_candidates(records, prompts, behaviors, labels, behavior_token_ids, score_continuations, candidate_ids,
                     candidates):
    """Replaces the labels of records with candidates by their most likely candidate (see module doc)."""
    labels = list(labels)
    prefixes, continuations, owners = [], [], []
    for i, record in enumerate(records):
        prefix = list(prompts[i])
        if behavior_token_ids is not None and behaviors[i] in behavior_token_ids:
            prefix.append(behavior_token_ids[behaviors[i]])
        for key in candidates(record):
            prefixes.append(prefix)
            continuations.append(candidate_ids(record, key))
            owners.append((i, key))
    if not owners:
        return labels
    scores = list(score_continuations(prefixes, continuations))
    best: dict[int, tuple[float, str]] = {}
    for (i, key), score in zip(owners, scores):
        if i not in best or score > best[i][0]:  # ties: first option wins
            best[i] = (score, key)
    for i, (_, key) in best.items():
        labels[i] = key
    return labels


def as_records(source: Any, spec: Any) -> list[Record]:
    """A split as a list of records (a TFDS data source's elements are validated dicts)."""
    if isinstance(source, list) and all(isinstance(r, Record) for r in source):
        return source
    return [record_from_dict(source[i], spec=spec, where=f"example {i}") for i in range(len(source))]


def stratified_subset(records: Sequence[Record], limit: int) -> list[Record]:
    """The first ``limit`` records taking categories in turn (all of them when limit <= 0)."""
    if limit <= 0 or limit >= len(records):
        return list(records)
    by_category: dict[str, list[Record]] = {}
    for r in records:
        by_category.setdefault(r.category, []).append(r)
    out: list[Record] = []
    queues = [iter(v) for v in by_category.values()]
    while len(out) < limit and queues:
        for q in list(queues):
            r = next(q, None)
            if r is None:
                queues.remove(q)
            elif len(out) < limit:
                out.append(r)
    return out


def evaluate_model(
    model: Decoder,
    tokenizer: Any,
    records: Sequence[Record],
    *,
    name: str,
    style: str,
    spec: BehaviorSpec | None = None,
    few_shot: FewShotPool | None = None,
    label_space: Mapping[str, Sequence[str]] | None = None,
    mode: str = "generate",
    mesh: Mesh | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    max_prompt_len: int | None = None,
    force_behavior: str | None = None,
    temperature: float = 0.0,
    seed: int = 0,
) -> EvalResult:
    """Evaluates one model on ``records`` with prompts of one format ``style`` (see bsft_jax.data.format).

    ``behavior_sft`` runs read the behavior token (the tokenizer must hold them); other styles are
    scored without behavior. ``few_shot`` needs a :class:`FewShotPool` of training records;
    ``label_space`` (category -> labels, from the training split) lists the allowed reply heads in
    prompting-baseline prompts and, in ``loglik`` mode, gives the flag classes ranked for open items
    (multiple-choice items rank their options). Prompts are cut from the left to ``max_prompt_len``
    (default: the model's ``max_position_embeddings`` minus ``max_new_tokens``).
    """
    spec = spec or BehaviorSpec()
    formatter = Formatter(tokenizer, style=style, spec=spec, few_shot=few_shot, label_space=label_space)
    behavior_ids = dict(formatter.behavior_ids) if style == "behavior_sft" else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sampler = Sampler(model, mesh=mesh, pad_id=pad_id, max_batch_size=batch_size)
    eos_ids = sorted({*model.config.stop_token_ids, formatter.end_id})
    if max_prompt_len is None:
        max_prompt_len = model.config.max_position_embeddings - max_new_tokens

    def generate(prompts: Sequence[Sequence[int]], force_first_token: int | None = None) -> SamplerOutput:
        return sampler(prompts, max_new_tokens=max_new_tokens, eos_ids=eos_ids, force_first_token=force_first_token,
                       temperature=temperature, seed=seed)

    def score(prefixes: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[float]:
        return continuation_logprobs(model, prefixes, continuations, mesh=mesh, pad_id=pad_id, batch_size=batch_size)

    result = evaluate_records(
        records, name=name, prompt_ids=lambda r: formatter.render_prompt(r, max_prompt_len), generate=generate,
        detokenize=lambda ids: tokenizer.decode(ids, skip_special_tokens=True), parse_label=parse_label,
        behavior_token_ids=behavior_ids, eos_ids=eos_ids, mode=mode, score_continuations=score,
        candidate_ids=lambda r, label: list(tokenizer.encode(reply_head(r, label), add_special_tokens=False)),
        candidates=lambda r: _candidates(r, label_space), force_behavior=force_behavior,
    )
    result.info.update(style=style, **{"prompts truncated": formatter.stats.truncated})
    return result


def _candidates(record: Record, space: Mapping[str, Sequence[str]] | None) -> tuple[str, ...]:
    """Labels ranked in loglik mode: the options, else the category's label space (none if unknown)."""
    if not record.is_multiple_choice and record.category not in (space or {}):
        return ()
    return candidate_labels(record, space)


def write_comparison(results: Sequence[EvalResult], out_dir: str | os.PathLike, *, title: str = "BehaviorBench "
                     "evaluation") -> dict[str, str]:
    """Writes report.json / report.md / radar.png (one column per run) and predictions_<run>.jsonl."""
    names = [r.name for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"write_comparison: run names must be unique, got {names}")
    paths = write_report({r.name: r.metrics for r in results}, out_dir, {r.name: r.info for r in results},
                         title=title)
    for r in results:
        path = storage.join(os.fspath(out_dir), f"predictions_{_slug(r.name)}.jsonl")
        with atomic_write(path) as f:
            for row in r.predictions():
                f.write(json.dumps(row) + "\n")
        paths[f"predictions:{r.name}"] = path
    return paths


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
