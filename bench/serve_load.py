"""Load on OpenAI-compatible chat servers: N concurrent clients, each sending requests back to back.

    python -m bench.serve_load --url http://127.0.0.1:8000 [--url http://127.0.0.1:8001 ...]
        [--clients 1,4,16] [--requests 8] [--max_tokens 64] [--out bench/serve_load.json]

Every ``--url`` (say ``python -m bsft_jax.serve --hf_path DIR`` and ``transformers serve`` on the same
folder) gets the same prompts at each concurrency, one server after the other, greedy, with a fixed
reply budget. Per server and concurrency: requests/s, output tokens/s (the servers' own ``usage``
counts), p50/p99 latency; ratios against the first ``--url``. Loopback only, bounded in count
(``clients * requests`` per level) and time (``--timeout`` per request). The key, if any, is read from
the environment variable named by ``--api_key_env`` and never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PROMPTS = [
    "Nurse: the patient in bed 4 is allergic to penicillin. Doctor: start amoxicillin 500 mg. What do you say?",
    "What is a normal resting heart rate for an adult?",
    "Doctor: we give 10 units of insulin now. Nurse: his glucose is 62. Anything to add?",
    "Name two signs of dehydration in the elderly.",
]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_level(url: str, model: str, api_key: str, clients: int, requests: int, max_tokens: int,
              timeout: float) -> dict[str, Any]:
    """``clients`` threads, each sending ``requests`` requests one after the other; the level's figures."""
    from openai import OpenAI

    client = OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key or "none", max_retries=0, timeout=timeout)

    def one_client(c: int) -> list[tuple[float, int]]:
        out = []
        for r in range(requests):
            messages = [{"role": "user", "content": PROMPTS[(c + r) % len(PROMPTS)]}]
            start = time.perf_counter()
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                   temperature=0)
            out.append((time.perf_counter() - start, reply.usage.completion_tokens if reply.usage else 0))
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for per_client in pool.map(one_client, range(clients)) for x in per_client]
    wall = time.perf_counter() - start
    latencies = [s for s, _ in results]
    tokens = sum(n for _, n in results)
    return {"clients": clients, "requests": len(results), "seconds": round(wall, 3),
            "requests_per_s": round(len(results) / wall, 3), "output_tokens_per_s": round(tokens / wall, 2),
            "p50_s": round(percentile(latencies, 50), 3), "p99_s": round(percentile(latencies, 99), 3)}


def model_of(url: str, api_key: str) -> str:
    """The first model id the server lists."""
    from openai import OpenAI

    return OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key or "none", max_retries=0).models.list().data[0].id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", action="append", required=True, help="server base URL (repeat to compare)")
    parser.add_argument("--model", action="append", help="model id per --url (default: the first it lists)")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=8, help="requests per client per level")
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--api_key_env", default="", help="environment variable holding the API key")
    parser.add_argument("--out", default="", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    for url in args.url:
        if not url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
            parser.error(f"--url {url}: loopback addresses only")
    api_key = os.environ.get(args.api_key_env, "") if args.api_key_env else ""
    models = args.model or [model_of(u, api_key) for u in args.url]
    levels = [int(c) for c in args.clients.split(",") if c]
    report: dict[str, Any] = {"max_tokens": args.max_tokens, "requests_per_client": args.requests, "servers": {}}
    for url, model in zip(args.url, models):
        rows = [run_level(url, model, api_key, c, args.requests, args.max_tokens, args.timeout) for c in levels]
        report["servers"][url] = {"model": model, "levels": rows}
        for row in rows:
            print(json.dumps({"url": url, **row}))
    base = report["servers"][args.url[0]]["levels"]
    for url in args.url[1:]:
        report["servers"][url]["ratio_to_first"] = [
            {"clients": a["clients"], "output_tokens_per_s": round(b["output_tokens_per_s"] /
                                                                   max(a["output_tokens_per_s"], 1e-9), 3)}
            for a, b in zip(base, report["servers"][url]["levels"])]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
