"""LLM-judge ratings of the free-text replies (G-Eval style), from any OpenAI-compatible endpoint.

The paper rates replies on specificity and implicitness besides the label's macro-F1. Each reply is
sent with its scene to ``/v1/chat/completions`` of the judge (``--judge_url``, ``--judge_model``) once per
criterion, with the prompts of ``judge_prompts.json`` beside this file (criterion, evaluation steps,
a 1-5 scale, "Score: N"). The rating is the first ``Score: N`` (or a lone leading digit 1-5) in the
answer; anything else counts as unparseable. Failed calls (connection errors, 429 and 5xx) are
retried with exponential backoff; a call that still fails counts as an error. Neither ever fails
the evaluation: the report gives, per arm, the mean of each criterion overall, per group and per
category, with the counts of rated, unparseable and failed ratings.

Credentials come from the environment only (``OPENAI_API_KEY``, or the variable ``--judge_key_env``
names) and are never logged or written. Standard library only (urllib), so the evaluator gains no
dependency.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bsft_jax import storage
from bsft_jax.behavior import taxonomy
from bsft_jax.data.format import scene_text
from bsft_jax.evaluate.core import _slug
from bsft_jax.evaluate.report import add_section
from bsft_jax.files import atomic_write
from bsft_jax.setup.settings import ConfigError

log = logging.getLogger("bsft_jax.evaluate.judge")

PROMPTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "judge_prompts.json")
SECTION = "## LLM judge"
_SCORE = re.compile(r"(?:score|rating)[*\s]*[:=]?[*\s]*([1-5])(?!\.?[0-9])", re.IGNORECASE)
_LEADING = re.compile(r"^\s*([1-5])(?!\.?[0-9])")
RETRY_STATUSES = (408, 409, 429, 500, 502, 503, 504)


def load_prompts(path: str = PROMPTS_FILE) -> dict[str, dict[str, str]]:
    """criterion -> {"system", "user"} (keys starting with "_" are notes)."""
    with open(path, encoding="utf-8") as f:
        prompts = json.load(f)
    return {k: v for k, v in prompts.items() if not k.startswith("_")}


def parse_rating(text: str | None) -> int | None:
    """The 1-5 rating in a judge's answer ("Score: 4", "**Rating**: 5", or "3" alone at the start), else None."""
    if not text:
        return None
    match = _SCORE.search(text) or _LEADING.match(text)
    return int(match.group(1)) if match else None


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is and how hard to try.

    key_env:   environment variable holding the API key (unset or empty: no Authorization header).
    retries:   further attempts after a failed call; the wait doubles from ``backoff_s``.
    """

    url: str
    model: str
    key_env: str = "OPENAI_API_KEY"
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 120.0
    max_tokens: int = 32


def check_judge_settings(settings: JudgeSettings) -> None:
    """The judge flags' mistakes, before any model is loaded (one line naming the flag)."""
    if not settings.url:
        raise ConfigError("--judge_model needs --judge_url URL (the judge's OpenAI-compatible server)")
    if not settings.url.startswith(("http://", "https://")):
        raise ConfigError(f"--judge_url={settings.url!r}: expected an http(s) URL of an OpenAI-compatible server, "
                          "e.g. http://127.0.0.1:8000/v1")
    if not settings.model:
        raise ConfigError("--judge_url needs --judge_model NAME (the model the judge server serves)")
    if settings.key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", settings.key_env):
        raise ConfigError(f"--judge_key_env must name an environment variable (the key itself is read from it), "
                          f"got a value of {len(settings.key_env)} characters that is not a variable name")


class Judge:
    """Rates (scene, reply) pairs on every criterion of ``prompts``; counts what went wrong."""

    def __init__(self, settings: JudgeSettings, prompts: Mapping[str, Mapping[str, str]] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.settings, self.prompts = settings, dict(prompts or load_prompts())
        self._key = os.environ.get(settings.key_env, "") if settings.key_env else ""
        if settings.key_env and not self._key:  # the variable's name only: the key itself is never logged
            log.warning("judge: $%s is not set; calling %s without an API key", settings.key_env, settings.url)
        self._sleep = sleep
        self.calls = self.failures = 0

    @property
    def endpoint(self) -> str:
        base = self.settings.url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + ("" if base.endswith("/v1") else "/v1") + \
            "/chat/completions"

    def ask(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        """The judge's answer text, or None once every attempt failed (never raises for the server's faults)."""
        body = json.dumps({"model": self.settings.model, "messages": list(messages), "temperature": 0,
                           "max_tokens": self.settings.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        for attempt in range(self.settings.retries + 1):
            self.calls += 1
            try:
                request = urllib.request.Request(self.endpoint, data=body, headers=headers)
                with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as r:
                    return json.loads(r.read())["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as e:
                retry, why = e.code in RETRY_STATUSES, f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                retry, why = True, type(e).__name__
            except (ValueError, KeyError, IndexError, TypeError):
                retry, why = False, "a reply that is not a chat completion"
            if not retry or attempt == self.settings.retries:
                self.failures += 1
                log.warning("judge call failed (%s) after %d attempt(s)", why, attempt + 1)
                return None
            self._sleep(self.settings.backoff_s * 2 ** attempt)
        return None

    def rate(self, scene: str, reply: str) -> dict[str, int | str | None]:
        """criterion -> rating 1-5, ``"unparseable"`` or ``"error"`` (the call failed)."""
        out: dict[str, int | str | None] = {}
        for criterion, prompt in self.prompts.items():
            answer = self.ask([{"role": "system", "content": prompt["system"]},
                               {"role": "user", "content": prompt["user"].format(scene=scene, reply=reply)}])
            rating = parse_rating(answer)
            out[criterion] = "error" if answer is None else rating if rating is not None else "unparseable"
        return out


def summarize(items: Sequence[Mapping[str, Any]], criteria: Sequence[str]) -> dict[str, Any]:
    """Means per criterion (overall, per group, per category) and counts, from items with ``category`` and
    ``ratings`` (criterion -> rating, "unparseable" or "error")."""
    out: dict[str, Any] = {"items": len(items)}
    for criterion in criteria:
        scores: dict[str, list[int]] = {}
        counts = {"rated": 0, "unparseable": 0, "error": 0}
        for item in items:
            value = item["ratings"].get(criterion)
            if isinstance(value, int):
                counts["rated"] += 1
                for key in ("all", f"group:{_group(item['category'])}", f"category:{item['category']}"):
                    scores.setdefault(key, []).append(value)
            else:
                counts["unparseable" if value == "unparseable" else "error"] += 1
        means = {k: round(sum(v) / len(v), 3) for k, v in scores.items()}
        out[criterion] = {"mean": means.pop("all", None), **counts,
                          "by_group": {k[6:]: v for k, v in sorted(means.items()) if k.startswith("group:")},
                          "by_category": {k[9:]: v for k, v in sorted(means.items()) if k.startswith("category:")}}
    return out


def _group(category: str) -> str:
    try:
        return taxonomy.group_of(category)
    except KeyError:
        return "other"


def judge_run(judge: Judge, items: Sequence[Any], scenes: Mapping[str, str]) -> dict[str, Any]:
    """Rates every scored item of one arm (``id``, ``category``, ``reply``; the scene from ``scenes[id]``)."""
    rated = [{"id": str(i.id), "category": i.category, "ratings": judge.rate(scenes[str(i.id)], i.reply)}
             for i in items]
    return {"summary": summarize(rated, list(judge.prompts)), "ratings": rated}


def judge_markdown(summaries: Mapping[str, Mapping[str, Any]], criteria: Sequence[str], model: str) -> str:
    """The report section: one row per arm, the mean of each criterion and the failure counts."""
    head = " | ".join(f"{c} (1-5)" for c in criteria)
    lines = [f"\n{SECTION}: {model}\n\n",
             "Means over the rated replies; unparseable / failed ratings are counted, not scored.\n\n",
             f"| arm | {head} | rated | unparseable | failed |\n", "|" + " --- |" * (len(criteria) + 4) + "\n"]
    for arm, s in summaries.items():
        means = " | ".join("n/a" if s[c]["mean"] is None else f"{s[c]['mean']:.2f}" for c in criteria)
        counts = [sum(s[c][k] for c in criteria) for k in ("rated", "unparseable", "error")]
        lines.append(f"| {arm} | {means} | {counts[0]} | {counts[1]} | {counts[2]} |\n")
    for arm, s in summaries.items():
        for c in criteria:
            groups = ", ".join(f"{g} {m:.2f}" for g, m in s[c]["by_group"].items())
            if groups:
                lines.append(f"\n{arm}, {c} by group: {groups}\n")
    return "".join(lines)


def add_judge_to_report(folder: str, summaries: Mapping[str, Mapping[str, Any]], criteria: Sequence[str],
                        model: str) -> str:
    """Stores the summaries as ``judge`` in report.json and appends the section to report.md."""
    return add_section(folder, lambda report: report.update(judge={"model": model, "criteria": list(criteria),
                                                                   "runs": dict(summaries)}),
                       judge_markdown(summaries, criteria, model))


def judge_comparison(folder: str, results: Sequence[Any], records: Sequence[Any], settings: JudgeSettings) -> str:
    """Rates every arm of one split's comparison (``EvalResult``s) and adds the section to ``folder``'s report.

    ``records`` are the split's records (the scenes); each arm's ratings go to ``judge_<run>.jsonl``.
    :func:`bsft_jax.evaluate.compare.run_comparison` calls this after the report is written when
    ``--judge_url`` is set.
    """
    judge = Judge(settings)
    scenes = {str(r.id): scene_text(r) for r in records}
    summaries = {}
    for result in results:
        log.info("judge %s: rating %d replies of %s", settings.model, len(result.items), result.name)
        out = judge_run(judge, result.items, scenes)
        summaries[result.name] = out["summary"]
        with atomic_write(storage.join(folder, f"judge_{_slug(result.name)}.jsonl")) as f:
            for row in out["ratings"]:
                f.write(json.dumps(row) + "\n")
    if judge.failures:
        log.warning("judge %s: %d of %d calls failed (counted as 'failed' in the report)", settings.model,
                    judge.failures, judge.calls)
    return add_judge_to_report(folder, summaries, list(judge.prompts), settings.model)
