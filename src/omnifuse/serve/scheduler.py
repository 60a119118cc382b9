"""Dynamic batching for the server: requests wait in a bounded queue; one worker thread takes up to
``max_batch_size`` of them at a time (waiting ``max_wait_s`` for a batch to fill) and decodes them
together with the engine, streaming each request's text back to its own asyncio queue.

The queue is bounded so that overload is refused at once (the server answers 503 with Retry-After)
instead of building a backlog no client will wait for. The worker never dies: an exception while
decoding a batch fails that batch's requests and the worker goes on with the next one.

Stop strings are applied here, on the decoded text: a request's text is held back while its end could
still be the beginning of a stop string, so a client never sees part of one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from omnifuse.processing import Encoded
from omnifuse.serve.engine import Engine, GenerationConfig

log = logging.getLogger("omnifuse.serve")


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    text: str  # the whole answer
    finish_reason: str  # "stop" | "length"
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str
    status: int = 500


@dataclass(eq=False)
class Job:
    encoded: Encoded
    cfg: GenerationConfig
    stops: list[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set by the request handler when the client went away
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already sent
    finished: bool = False

    def emit(self, event: Delta | Done | Failed) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` might start a stop string (or are a partial
    multi-byte character the tokenizer could not decode yet)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    if text.endswith("\ufffd"):
        hold = max(hold, 1)
    return hold


class Scheduler:
    def __init__(
        self, engine: Engine, max_batch_size: int = 8, max_queue: int = 64, max_wait_s: float = 0.005
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1")
        self.engine = engine
        self.max_batch_size, self.max_queue, self.max_wait_s = max_batch_size, max_queue, max_wait_s
        self._pending: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="omnifuse-engine", daemon=True)
        self.batches = 0  # statistics for /health
        self.completed = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._pending)

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._closing:
                raise ShuttingDown
            if len(self._pending) >= self.max_queue:
                raise QueueFull
            self._pending.append(job)
            self._cv.notify()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Refuse new work, fail the queued requests, let the batch in progress finish."""
        with self._cv:
            self._closing = True
            while self._pending:
                self._pending.popleft().emit(Failed("the server is shutting down; retry later", 503))
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------ worker
    def _take_batch(self) -> list[Job] | None:
        with self._cv:
            while not self._pending and not self._closing:
                self._cv.wait()
            if self._closing and not self._pending:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while len(self._pending) < self.max_batch_size and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            jobs = []
            while self._pending and len(jobs) < self.max_batch_size:
                job = self._pending.popleft()
                if not job.cancelled:
                    jobs.append(job)
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take_batch()
            if jobs is None:
                return
            if not jobs:
                continue
            try:
                self._decode(jobs)
            except Exception as exc:  # a bug must fail these requests, not the server
                log.exception("generation failed for a batch of %d requests", len(jobs))
                for job in jobs:
                    if not job.finished:
                        job.finished = True
                        job.emit(Failed(f"generation failed: {type(exc).__name__}: {exc}"))
            self.batches += 1

    def _decode(self, jobs: list[Job]) -> None:
        engine = self.engine
        stream = engine.stream(
            [j.encoded for j in jobs], [j.cfg for j in jobs], cancelled=lambda i: jobs[i].cancelled
        )
        for step in stream:
            touched = {i for i, _ in step.tokens}
            for i, tok in step.tokens:
                jobs[i].ids.append(tok)
            for i in touched | set(step.finished):
                job = jobs[i]
                if job.finished:
                    continue
                text = engine.processor.tokenizer.decode(job.ids, skip_special_tokens=True).lstrip()
                reason = step.finished.get(i)
                cut = min((p for p in (text.find(s) for s in job.stops) if p >= 0), default=-1)
                if cut >= 0:
                    text, reason = text[:cut], "stop"
                if reason is None:
                    upto = len(text) - _held_back(text, job.stops)
                    if upto > job.sent:
                        job.emit(Delta(text[job.sent : upto]))
                        job.sent = upto
                    continue
                job.finished = True
                if reason == "cancelled":
                    continue
                text = text.rstrip()
                if len(text) > job.sent:
                    job.emit(Delta(text[job.sent :]))
                job.emit(Done(text, reason, len(job.ids)))
                job.cancelled = True  # stops the engine decoding a row that hit a stop string
                self.completed += 1
