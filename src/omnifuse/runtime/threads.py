"""How many CPU threads torch uses, chosen from the cores other processes leave free.

torch starts one intra-op thread per core and every parallel operation waits for all of them: when
another process takes one of two cores, each matrix product waits for the thread that lost its core,
and a step can take several times longer than with one thread fewer (benchmarks/threads_under_load.py
measures it). So on the CPU omnifuse measures, every few seconds, how much CPU time the *other*
processes took (the machine's busy time minus this process's own, read through psutil) and uses the
cores that are left: ``free = cores − others``, at least one thread. A change needs two readings in a
row that agree, so one burst of another process does not make the count flap.

Nothing waits for a reading. The first one spans the time since this module was imported (a run builds
its model in between), so the count is set as the work starts; where that is under a quarter second or
over a minute ago, a reading is taken at the start and the count is decided at the first :func:`tick` a
quarter second later, torch's count (one thread per core by default) running the work until then.

A count the user chose (``runtime.threads: N``, or ``OMP_NUM_THREADS`` in the environment) is used as
it is and never changed. torch has no API for this (``torch.set_num_threads`` only sets a count), so
the measurement is written here.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import psutil
import torch

# Other processes' use of a core is given up to when it passes half a core: a thread on a core shared
# with a busy process runs at about half speed, and every parallel operation waits for it.
SHARE_CORES = 0.5


def _busy_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (all cores, seconds)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _own_seconds() -> float:
    """CPU time of this process and its threads so far (seconds)."""
    t = psutil.Process().cpu_times()
    return t.user + t.system


def _reading() -> tuple[float, float, float]:
    """(monotonic clock, machine busy seconds, own seconds): one end of a measured window."""
    return time.monotonic(), _busy_seconds(), _own_seconds()


# The first window is at least this long (shorter ones are noise) and at most this old (longer ones
# average away the load of now).
FIRST_WINDOW = 0.25
FIRST_WINDOW_MAX = 60.0

# A reading when omnifuse is loaded: the start of the first window of the first run in this process.
_IMPORTED = _reading()


def free_cores(others_busy: float, cores: int) -> int:
    """The thread count for ``others_busy`` cores' worth of other processes' work on ``cores`` cores."""
    return max(1, min(cores, cores - math.ceil(others_busy - SHARE_CORES)))


@dataclass
class CpuThreads:
    """Keeps torch's intra-op thread count at the free cores; :meth:`tick` once per unit of work
    (a training step, an evaluation batch) re-measures at most every ``interval`` seconds."""

    fixed: int | None = None  # the user's count: set once, never changed
    interval: float = 5.0
    cores: int = field(default_factory=lambda: psutil.cpu_count(logical=True) or 1)
    clock: Callable[[], float] = time.monotonic
    readings: Callable[[], tuple[float, float]] = lambda: (_busy_seconds(), _own_seconds())
    changes: list[tuple[int, int]] = field(default_factory=list)  # (from, to), for the run's log
    # An earlier (clock, busy, own) reading to start the first window at (kept_threads: the one taken
    # at import); used when it is FIRST_WINDOW to FIRST_WINDOW_MAX seconds old.
    first: tuple[float, float, float] | None = None
    _last: tuple[float, float, float] | None = None
    _pending: int | None = None
    _decided: bool = False

    def start(self) -> CpuThreads:
        """Set the count now if the first window is long enough, else at the first tick once it is;
        never waits."""
        if self.fixed is not None:
            torch.set_num_threads(self.fixed)
            return self
        now = self.clock()
        first = self.first
        if first is None or not FIRST_WINDOW <= now - first[0] <= FIRST_WINDOW_MAX:
            first = (now, *self.readings())
        self._last = first
        self._decide_first()
        return self

    def _decide_first(self) -> None:
        if self.clock() - self._last[0] >= FIRST_WINDOW:
            torch.set_num_threads(self._measure())
            self._decided = True

    def _measure(self) -> int:
        now, (busy, own) = self.clock(), self.readings()
        last, self._last = self._last, (now, busy, own)
        others = max(0.0, (busy - last[1]) - (own - last[2])) / max(now - last[0], 1e-6)
        return free_cores(others, self.cores)

    def tick(self) -> None:
        if self.fixed is not None or self._last is None:
            return
        if not self._decided:
            self._decide_first()
            return
        if self.clock() - self._last[0] < self.interval:
            return
        want = self._measure()
        if want == torch.get_num_threads():
            self._pending = None
        elif self._pending == want:  # the second reading in a row that asks for it
            self.changes.append((torch.get_num_threads(), want))
            torch.set_num_threads(want)
            self._pending = None
        else:
            self._pending = want


_current: ContextVar[CpuThreads | None] = ContextVar("omnifuse_cpu_threads", default=None)


@contextmanager
def kept_threads(device: torch.device, requested: int | str) -> Iterator[CpuThreads | None]:
    """Keep torch's thread count at the free cores while the block runs on ``device`` (nothing off the
    CPU), and restore the count it had after. ``requested`` is the recipe's ``runtime.threads`` (``auto``
    or a count); ``OMP_NUM_THREADS`` set by the user (or by torchrun, one per process) counts as a choice.
    Loops inside call :func:`tick` once per unit of work."""
    if device.type != "cpu":
        yield None
        return
    if requested == "auto" and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        requested = int(os.environ["OMP_NUM_THREADS"])
    before = torch.get_num_threads()
    keeper = CpuThreads(fixed=None if requested == "auto" else int(requested), first=_IMPORTED).start()
    token = _current.set(keeper)
    try:
        yield keeper
    finally:
        _current.reset(token)
        torch.set_num_threads(before)


def tick() -> None:
    """Re-measure the free cores if it is time (a no-op outside :func:`kept_threads`)."""
    keeper = _current.get()
    if keeper is not None:
        keeper.tick()


__all__ = ["CpuThreads", "free_cores", "kept_threads", "tick"]
