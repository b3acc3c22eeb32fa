"""The one thread that runs the device: a bounded queue of chat jobs in, batches through the engine, events out.

Request handlers (on the asyncio loop) :meth:`Batcher.submit` a :class:`Job` and read its events; the
batcher thread takes the next batch from the queue (the first job, and whatever arrives within
``max_wait_s`` after it, up to the engine's batch size: static batching), runs it through the
:class:`~bsft_jax.serve.engine.Engine` and reports, per job: ``start`` (the first token is known: the
behavior), ``delta`` (new reply text), then ``done`` (finish reason, token counts) or ``error``. A job
whose client went away (:meth:`Job.cancel`) is skipped if still queued and cancelled at the next decode call if running,
so its row stops decoding at once. A full queue refuses new jobs (429); after :meth:`Batcher.stop`
new jobs are refused (503) while the queued and running ones finish.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from bsft_jax.serve.chat import ReplyText
from bsft_jax.serve.engine import Engine, Row, RunningBatch
from bsft_jax.serve.protocol import APIError, ChatRequest

log = logging.getLogger("bsft_jax.serve")

Emit = Callable[[str, Any], None]  # (event, payload); must be safe to call from the batcher thread


@dataclasses.dataclass(eq=False)
class Job:
    """One request on its way through the batcher."""

    request: ChatRequest
    reply: ReplyText
    emit: Emit
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    finished: bool = False
    submitted: float = dataclasses.field(default_factory=time.monotonic)

    def cancel(self) -> None:
        """The client is gone: drop the job if queued, stop its row if running (thread-safe)."""
        self.cancelled.set()

    @property
    def row(self) -> Row:
        r = self.request
        return Row(prompt=r.prompt_ids, max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p,
                   seed=r.seed, force_first_token=r.force_token)


class Batcher:
    """Runs queued jobs through ``engine`` on a thread of its own.

    max_queue:   jobs waiting (not counting the running batch) before :meth:`submit` answers 429.
    max_wait_s:  how long the first job of a batch waits for others to share its device calls.
    """

    def __init__(self, engine: Engine, *, max_queue: int = 64, max_wait_s: float = 0.02):
        self.engine, self.max_wait_s = engine, max(0.0, float(max_wait_s))
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=max(1, max_queue))
        self.running = 0
        self.batches = 0
        self.rows = 0
        self.cancelled = 0  # rows stopped early because their client went away
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bsft-serve-batcher", daemon=True)

    # -- the handlers' side ---------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queues ``job``; a 503 while stopping, a 429 when the queue is full."""
        if self._stopping.is_set():
            raise APIError(503, "the server is shutting down; retry on another replica", code="shutting_down")
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise APIError(429, f"the server is busy ({self.queue.maxsize} requests already waiting); retry shortly",
                           code="queue_full") from None

    def stats(self) -> dict[str, Any]:
        return {"queued": self.queue.qsize(), "running": self.running, "batches": self.batches, "rows": self.rows,
                "cancelled": self.cancelled, "compiles": self.engine.compile_counts()}

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuses new jobs, lets the queued and running ones finish, then ends the thread."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            jobs = self._collect()
            if not jobs:
                if self._stopping.is_set() and self.queue.empty():
                    return
                continue
            try:
                self._run(jobs)
            except Exception as e:  # a bug must fail these requests, never the server
                log.exception("batch of %d failed", len(jobs))
                for job in jobs:
                    if not job.finished:
                        job.finished = True
                        job.emit("error", f"generation failed: {type(e).__name__}")
            finally:
                self.running = 0

    def _collect(self) -> list[Job]:
        """The next batch: the first live job (waits up to 0.1 s for one), then whatever arrives within
        ``max_wait_s`` of it, up to the engine's batch size (jobs already queued are taken at once)."""
        try:
            first = self.queue.get(timeout=0.1)
        except queue.Empty:
            return []
        jobs = [] if first.cancelled.is_set() else [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(jobs) < self.engine.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if not job.cancelled.is_set():
                jobs.append(job)
        return jobs

    def _run(self, jobs: list[Job]) -> None:
        self.batches += 1
        self.rows += len(jobs)
        self.running = len(jobs)
        batch = self.engine.start([j.row for j in jobs])
        self._deliver(jobs, batch, [list(t) for t in batch.tokens])
        while not self.engine.finished(batch):
            cancel = [i for i, j in enumerate(jobs) if not batch.done[i] and (j.finished or j.cancelled.is_set())]
            new = self.engine.step(batch, cancel)
            self._deliver(jobs, batch, new)
            self.running = sum(not d for d in batch.done)

    def _deliver(self, jobs: list[Job], batch: RunningBatch, new: list[list[int]]) -> None:
        eos = set(self.engine.eos_e.tolist())
        for i, job in enumerate(jobs):
            if job.finished:
                continue
            if job.cancelled.is_set():
                job.finished = True
                self.cancelled += 1
                continue
            first = not job.reply.ids
            piece = job.reply.feed(new[i], batch.done[i])
            if first and job.reply.ids:
                job.emit("start", job.reply.behavior)
            if piece:
                job.emit("delta", piece)
            if batch.done[i] or job.reply.stopped:
                job.finished = True
                tokens = batch.tokens[i]
                length = not job.reply.stopped and len(tokens) >= job.request.max_tokens and tokens[-1] not in eos
                job.emit("done", {"finish_reason": "length" if length else "stop", "token_ids": list(tokens),
                                  "text": job.reply.text})
