"""Dynamic batching for the server: requests wait in a bounded queue; one worker thread forms batches
of them and decodes them with the engine, streaming each request's text back to its own asyncio queue.

The queue is bounded so that overload is refused at once (the server answers 503 with Retry-After)
instead of building a backlog no client will wait for.

Two lanes, so that one long prompt cannot stall everyone else. A request whose prompt is longer than
``prefill_chunk`` tokens is *long*; a batch holds short or long requests only, at most one batch of
each kind runs at a time, and the worker interleaves the two step by step, always advancing the one
that is furthest behind its share of the worker (``long_share`` = 1/4 for the long lane while both are
busy: like vLLM, which schedules decoding rows before prefill chunks, it favours the many short
requests; the long lane still always progresses). The engine prefills in chunks of ``prefill_chunk``
columns and yields between chunks, so a short request waits at most about one chunk of a long prompt's
prefill per few steps of its own, never the whole of it. A batch's prompts cost at most
``prefill_budget`` padded tokens (rows × longest prompt), except a single prompt longer than that,
which runs alone.

One request never fails another. Sampling parameters are checked before a request is queued; a row
whose own sampling fails in the engine fails alone; and if a whole batch fails, each of its unfinished
requests is run again alone. Every row is deterministic (greedy, or sampled with a seed: the server
draws one for a request that sent none) and a row's tokens do not depend on its batch, so a request
replayed alone regenerates exactly the text it has already streamed and goes on from there.

Stop strings are applied here, on the decoded text: a request's text is held back while its end could
still be the beginning of a stop string, so a client never sees part of one.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from omnifuse.errors import OmnifuseError
from omnifuse.generation.engine import Engine, GenerationConfig, StepTokens
from omnifuse.processing import Encoded

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
    shown: str = ""  # and those characters, to check a replay against
    finished: bool = False
    solo: bool = False  # being run again alone after its batch failed
    caught_up: bool = False  # a replay has regenerated the text already sent
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def prompt_tokens(self) -> int:
        return len(self.encoded.input_ids)

    def emit(self, event: Delta | Done | Failed) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True

    def fail(self, message: str, status: int = 500) -> None:
        if not self.finished:
            self.finished = True
            self.emit(Failed(message, status))


@dataclass(eq=False)
class _Batch:
    jobs: list[Job]
    long: bool
    steps: Iterator[StepTokens] | None = None  # started on its first turn, inside the error guard
    share: float = 1.0  # its lane's share of the worker while both lanes are busy
    used: float = 0.0  # worker seconds spent on it, over its share: the lane with less goes next


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


def _status(exc: Exception) -> int:
    return 400 if isinstance(exc, OmnifuseError) else 500  # omnifuse's own errors are the user's to fix


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")  # runs ldconfig: once
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None  # glibc only


def _release_memory() -> None:
    """Give freed heap pages back to the OS after a long prompt: glibc keeps them otherwise, and the
    activations and KV cache of a 7k-token prompt would stay in the server's RSS."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        max_batch_size: int = 8,
        max_queue: int = 64,
        max_wait_s: float = 0.005,
        prefill_chunk: int = 256,
        prefill_budget: int = 4096,
        long_share: float = 0.25,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or prefill_chunk < 1 or prefill_budget < 1:
            raise ValueError("max_batch_size, max_queue, prefill_chunk and prefill_budget must be at least 1")
        if not 0 < long_share < 1:
            raise ValueError(f"long_share must be between 0 and 1, not {long_share}")
        self.long_share = long_share
        self.engine = engine
        self.max_batch_size, self.max_queue, self.max_wait_s = max_batch_size, max_queue, max_wait_s
        self.prefill_chunk, self.prefill_budget = prefill_chunk, prefill_budget
        self._pending: deque[Job] = deque()
        self._active: list[_Batch] = []  # at most one short and one long batch
        self._cv = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="omnifuse-engine", daemon=True)
        self.batches = 0  # statistics for /health
        self.completed = 0
        self.retried = 0  # requests run again alone after their batch failed

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
        """Refuse new work, fail the queued requests, let the batches in progress finish."""
        with self._cv:
            self._closing = True
            while self._pending:
                self._pending.popleft().fail("the server is shutting down; retry later", 503)
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------ forming batches
    def _is_long(self, job: Job) -> bool:
        return job.prompt_tokens > self.prefill_chunk

    def _form(self, long: bool) -> _Batch | None:
        """Take the oldest waiting requests of one kind, in order, while they fit the batch size and
        the prefill budget; the first always goes (alone, if it is over the budget). Called locked."""
        jobs: list[Job] = []
        width = 0
        for job in list(self._pending):
            if job.cancelled:
                self._pending.remove(job)
                continue
            if self._is_long(job) != long or len(jobs) >= self.max_batch_size:
                continue
            if jobs and (job.solo or jobs[0].solo):
                break  # a request run again alone has its batch to itself
            wider = max(width, job.prompt_tokens)
            if jobs and (len(jobs) + 1) * wider > self.prefill_budget:
                continue
            jobs.append(job)
            width = wider
        for job in jobs:
            self._pending.remove(job)
        return _Batch(jobs, long) if jobs else None

    def _ready(self, now: float) -> float | None:
        """Seconds until the oldest waiting request should start a batch (0: now), None if none waits.
        A batch waits up to ``max_wait_s`` to fill, unless it is already full. Called locked."""
        live = [j for j in self._pending if not j.cancelled]
        if not live:
            return None
        if len(live) >= self.max_batch_size or self._closing or any(j.solo for j in live):
            return 0.0
        return max(0.0, live[0].queued_at + self.max_wait_s - now)

    def _admit(self) -> bool:
        """Start a batch in each free lane that has requests ready; block while there is nothing to
        do. False when the scheduler is closed and all work is done."""
        with self._cv:
            while True:
                wait = self._ready(time.monotonic())
                if wait == 0.0:
                    busy = {b.long for b in self._active}
                    for long in (False, True):
                        if long not in busy and (batch := self._form(long)) is not None:
                            batch.share = self.long_share if long else 1 - self.long_share
                            # It starts level with the running lane: no credit for the time it was idle.
                            batch.used = min((b.used for b in self._active), default=0.0)
                            self._active.append(batch)
                if self._active:
                    return True
                if self._closing and wait is None:
                    return False
                self._cv.wait(wait)

    # ------------------------------------------------------------ the worker
    def _run(self) -> None:
        while self._admit():
            batch = min(self._active, key=lambda b: b.used)
            t0 = time.perf_counter()
            try:
                over = self._advance(batch)
            except Exception as exc:  # a bug or a bad row must fail its own request, not the server
                self._recover(batch, exc)
                over = True
            batch.used += (time.perf_counter() - t0) / batch.share
            if over:
                self._active.remove(batch)
                self.batches += 1
                if batch.long:
                    batch.steps = None
                    _release_memory()

    def _advance(self, batch: _Batch) -> bool:
        """One step of a batch; True when the batch is over."""
        jobs = batch.jobs
        if all(j.finished or j.cancelled for j in jobs):
            if batch.steps is not None:
                batch.steps.close()  # every client went away: not one more prefill chunk
            for job in jobs:
                job.finished = True
            return True
        if batch.steps is None:
            batch.steps = self.engine.stream(
                [j.encoded for j in jobs],
                [j.cfg for j in jobs],
                cancelled=lambda i: jobs[i].cancelled,
                prefill_chunk=self.prefill_chunk,
            )
        step = next(batch.steps, None)
        if step is None:
            return True
        for i, tok in step.tokens:
            jobs[i].ids.append(tok)
        for i, exc in step.errors.items():
            log.error("generation failed for one request", exc_info=exc)
            jobs[i].fail(f"generation failed: {type(exc).__name__}: {exc}", _status(exc))
        for i in {i for i, _ in step.tokens} | set(step.finished):
            if not jobs[i].finished:
                self._deliver(jobs[i], step.finished.get(i))
        return False

    def _recover(self, batch: _Batch, exc: Exception) -> None:
        """A batch raised. Alone, its request fails; in company, each unfinished request runs again
        alone, so whichever row caused it fails by itself and the others complete."""
        if batch.steps is not None:
            batch.steps.close()
        left = [j for j in batch.jobs if not j.finished and not j.cancelled]
        if len(batch.jobs) == 1 or not left:
            log.exception("generation failed for a request", exc_info=exc)
            for job in batch.jobs:
                job.fail(f"generation failed: {type(exc).__name__}: {exc}", _status(exc))
            return
        log.warning(
            "a batch of %d requests failed (%s: %s); running its %d unfinished ones again one by one",
            len(batch.jobs),
            type(exc).__name__,
            exc,
            len(left),
        )
        with self._cv:
            for job in reversed(left):
                job.ids, job.solo = [], True
                self._pending.appendleft(job)
            self.retried += len(left)
        for job in batch.jobs:
            if job.cancelled:
                job.finished = True

    def _deliver(self, job: Job, reason: str | None) -> None:
        """Send what is new of a job's text; finish it if ``reason`` says so or a stop string showed."""
        text = self.engine.processor.tokenizer.decode(job.ids, skip_special_tokens=True).lstrip()
        cut = min((p for p in (text.find(s) for s in job.stops) if p >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        if reason == "error":
            return  # failed in _advance
        if reason == "cancelled":
            job.finished = True
            return
        final = reason is not None
        if final:
            text = text.rstrip()
        upto = len(text) if final else len(text) - _held_back(text, job.stops)
        if self._replay_diverged(job, text[:upto], final):
            job.fail("generation failed, and running it again gave another text than the one already sent")
            return
        if upto > job.sent:
            job.emit(Delta(text[job.sent : upto]))
            job.shown += text[job.sent : upto]
            job.sent = upto
        if not final:
            return
        job.finished = True
        job.emit(Done(text, reason, len(job.ids)))
        job.cancelled = True  # stops the engine decoding a row that hit a stop string
        self.completed += 1

    @staticmethod
    def _replay_diverged(job: Job, visible: str, final: bool) -> bool:
        """Whether a request run again alone came out different from the text it had already sent
        (rows are deterministic, so it should not). Checked once, when the replay has caught up."""
        if not job.solo or job.caught_up or not job.shown:
            return False
        if len(visible) < len(job.shown) and not final:
            return False
        job.caught_up = True
        return not (visible.startswith(job.shown) or (final and job.shown.rstrip() == visible))
