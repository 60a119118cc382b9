"""The CPU thread keeper: torch's thread count follows the cores other processes leave free."""

from __future__ import annotations

import pytest
import torch

from omnifuse.runtime import threads
from omnifuse.runtime.threads import CpuThreads, free_cores, kept_threads


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("others", "cores", "want"),
    [(0.0, 2, 2), (0.4, 2, 2), (0.7, 2, 1), (1.0, 2, 1), (1.6, 2, 1), (5.0, 2, 1), (1.0, 8, 7), (0.0, 1, 1)],
)
def test_free_cores(others, cores, want):
    assert free_cores(others, cores) == want


class FakeMachine:
    """A clock and /proc-like counters: `others` cores of other processes' work per second, and this
    process busy on `own` cores."""

    def __init__(self) -> None:
        self.now, self.busy, self.own = 0.0, 0.0, 0.0
        self.others, self.own_rate = 0.0, 1.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.busy += (self.others + self.own_rate) * seconds
        self.own += self.own_rate * seconds

    def keeper(self, **kw) -> CpuThreads:
        return CpuThreads(
            cores=2, interval=5.0, clock=lambda: self.now, readings=lambda: (self.busy, self.own), **kw
        )

    def started(self, **kw) -> CpuThreads:
        """A keeper started 1 s after an earlier reading (kept_threads': the one taken at import)."""
        first = (self.now, self.busy, self.own)
        self.advance(1.0)
        return self.keeper(first=first, **kw).start()


def test_threads_follow_the_load_after_two_readings_that_agree():
    m = FakeMachine()
    keeper = m.started()  # no other load during the first window: both cores, set at once
    assert torch.get_num_threads() == 2
    m.others = 1.0  # another CPU-bound process starts
    m.advance(6.0)
    keeper.tick()
    assert torch.get_num_threads() == 2  # one reading is not enough
    m.advance(2.0)
    keeper.tick()  # too soon to measure again: nothing changes
    assert torch.get_num_threads() == 2
    m.advance(4.0)
    keeper.tick()
    assert torch.get_num_threads() == 1 and keeper.changes == [(2, 1)]
    m.others = 0.0  # it ended
    for _ in range(2):
        m.advance(6.0)
        keeper.tick()
    assert torch.get_num_threads() == 2 and keeper.changes == [(2, 1), (1, 2)]


def test_the_first_reading_does_not_wait(monkeypatch):
    monkeypatch.setattr(threads.time, "sleep", lambda s: pytest.fail(f"slept {s} s"))
    m = FakeMachine()
    m.others = 1.0
    torch.set_num_threads(2)
    keeper = m.keeper().start()  # no earlier reading: one is taken now, nothing decided yet
    assert torch.get_num_threads() == 2
    m.advance(0.1)
    keeper.tick()  # the window is still too short to say anything
    assert torch.get_num_threads() == 2
    m.advance(0.2)
    keeper.tick()  # the first decision: one reading is enough, as at the start
    assert torch.get_num_threads() == 1 and keeper.changes == []
    m.others = 0.0
    m.advance(1.0)
    keeper.tick()  # after the first decision, re-measured every `interval` seconds again
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("age", [0.1, 120.0])
def test_an_earlier_reading_too_recent_or_too_old_is_not_used(age):
    m = FakeMachine()
    first = (m.now, m.busy, m.own)
    m.advance(age)  # idle all along: the earlier reading would say both cores
    m.others = 1.0
    torch.set_num_threads(2)
    keeper = m.keeper(first=first).start()
    assert torch.get_num_threads() == 2  # undecided: a fresh reading was taken
    m.advance(0.5)
    keeper.tick()
    assert torch.get_num_threads() == 1  # decided from the fresh window, which saw the load


def test_kept_threads_starts_without_waiting(monkeypatch):
    monkeypatch.setattr(threads.time, "sleep", lambda s: pytest.fail(f"slept {s} s"))
    with kept_threads(torch.device("cpu"), "auto") as kept:
        assert kept.first is not None and kept._last is not None
        assert 1 <= torch.get_num_threads()


def test_one_burst_does_not_change_the_count():
    m = FakeMachine()
    keeper = m.started()
    m.others = 1.5
    m.advance(6.0)
    keeper.tick()
    m.others = 0.0
    m.advance(6.0)
    keeper.tick()
    m.advance(6.0)
    keeper.tick()
    assert torch.get_num_threads() == 2 and keeper.changes == []


def test_own_work_is_not_counted_as_load():
    m = FakeMachine()
    m.own_rate = 2.0  # this process keeps both cores busy
    keeper = m.started()
    for _ in range(3):
        m.advance(6.0)
        keeper.tick()
    assert torch.get_num_threads() == 2 and keeper.changes == []


def test_a_chosen_count_is_kept(monkeypatch):
    m = FakeMachine()
    m.others = 1.0
    keeper = m.started(fixed=2)
    for _ in range(3):
        m.advance(6.0)
        keeper.tick()
    assert torch.get_num_threads() == 2 and keeper.changes == []
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with kept_threads(torch.device("cpu"), "auto") as kept:
        assert kept.fixed == 1 and torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    with kept_threads(torch.device("cpu"), 1) as kept:
        assert kept.fixed == 1 and torch.get_num_threads() == 1


def test_kept_threads_restores_the_count_and_is_idle_off_the_cpu():
    torch.set_num_threads(2)
    with kept_threads(torch.device("cpu"), 1):
        threads.tick()
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with kept_threads(torch.device("cuda"), "auto") as kept:
        assert kept is None
        threads.tick()  # nothing to keep: no error
    threads.tick()  # outside any block: a no-op


@pytest.mark.parametrize("bad", [0, -2, "many", True, 1.5])
def test_a_bad_thread_count_is_refused(bad):
    from pydantic import ValidationError

    from omnifuse.recipe.runtime import RuntimeSpec

    with pytest.raises(ValidationError, match="threads"):  # True: the generic YAML-boolean refusal
        RuntimeSpec(threads=bad)
    assert RuntimeSpec(threads="3").threads == 3 and RuntimeSpec().threads == "auto"
