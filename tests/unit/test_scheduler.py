"""Scheduler: priorities, queue bound, concurrency bound by worker id.

The duty cap per slot is measured on the daemon's own worker loop in test_duty_cycle.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from edged.errors import Throttled
from edged.power.config import Profile
from edged.power.governor import Governor
from edged.seams import FakeClock
from edged.server.scheduler import Scheduler

T0 = 1000.0


def bounded(bound: int | None, *jobs: str) -> Scheduler:
    """A scheduler with concurrency bound ``bound`` and ``jobs`` queued at normal priority."""
    s = Scheduler(queue_size=10)
    s.set_max_active(bound)
    for job in jobs:
        s.submit(job)
    return s


def wait_until_waiting(s: Scheduler, n: int) -> None:
    """Return once ``n`` threads wait on the scheduler's condition (bounded, not a timing assumption)."""
    deadline = time.monotonic() + 30
    while len(s._cond._waiters) < n:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "worker thread never blocked"
        time.sleep(0.001)


def taker(s: Scheduler, worker_id: int) -> tuple[threading.Thread, list[object]]:
    """A thread doing what a worker does first: ``get(worker_id)``; returns it and what it got."""
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(s.get(worker_id)))
    t.start()
    return t, got


def test_priority_order_and_queue_bound() -> None:
    s = Scheduler(queue_size=3)
    s.submit("n1", "normal")
    s.submit("l1", "low")
    s.submit("h1", "high")
    with pytest.raises(Throttled) as err:
        s.submit("n2", "normal", retry_after_ms=70)
    assert err.value.retry_after_ms == 70
    assert [s.get(0) for _ in range(3)] == ["h1", "n1", "l1"]
    assert s.depth() == 0 and s.active == 3


def test_bound_limits_active_jobs() -> None:
    s = bounded(1, "a", "b")
    assert s.get(0) == "a"
    t, got = taker(s, 0)
    wait_until_waiting(s, 1)  # one slot, taken: the worker waits although "b" is queued
    assert got == [] and s.depth() == 1
    s.done()
    t.join(timeout=30)
    assert not t.is_alive() and got == ["b"]


def test_bound_admits_only_the_first_worker_ids() -> None:
    s = bounded(1, "a")
    t, got = taker(s, 1)
    wait_until_waiting(s, 1)  # worker 1 is outside the bound even with the slot free
    assert got == [] and s.depth() == 1
    assert s.get(0) == "a"
    s.set_max_active(None)
    s.submit("b")  # unbounded: any worker
    t.join(timeout=30)
    assert not t.is_alive() and got == ["b"]


def test_blocked_worker_wakes_when_bound_is_raised() -> None:
    s = bounded(1, "a")
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(s.get(1)))
    t.start()
    wait_until_waiting(s, 1)  # worker 1 is outside the bound: it must be woken, not just look late
    s.set_max_active(2)  # notify_all: worker 1 may now take "a"
    t.join(timeout=30)
    assert not t.is_alive() and got == ["a"]


def test_finishing_a_job_under_a_bound_wakes_a_worker_held_back_by_it() -> None:
    s = bounded(1, "a", "b")
    assert s.get(0) == "a"
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(s.get(0)))
    t.start()  # blocks: the one slot is taken
    wait_until_waiting(s, 1)  # so done() must wake it, not merely run before it looks
    s.done()
    t.join(timeout=30)
    assert not t.is_alive() and got == ["b"]


class CountingCondition:
    """threading.Condition that counts its notifications."""

    def __init__(self, lock: Any) -> None:
        self._cond = threading.Condition(lock)  # the scheduler's own lock, which its callers hold
        self.notified = 0

    def wait(self, timeout: float | None = None) -> bool:
        return self._cond.wait(timeout)

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        self._cond.notify(n)

    def notify_all(self) -> None:
        self.notified += 1
        self._cond.notify_all()


@pytest.mark.parametrize("bound", [None, 1])
def test_finishing_a_job_that_frees_nothing_usable_wakes_nobody(bound) -> None:
    # Without a bound, or with nothing queued, a waiting worker could not use what done()
    # frees; waking it would only cost the finishing worker a GIL hand-off on its way to
    # the reply.
    s = Scheduler(queue_size=10)
    s.set_max_active(bound)
    s._cond = CountingCondition(s._lock)  # type: ignore[assignment]
    s.submit("a")
    assert s.get(0) == "a"
    if bound is None:
        s.submit("b")  # queued, but any waiting worker was already woken by submit()
    before = s._cond.notified
    s.done()
    assert s._cond.notified == before
    if bound is None:
        assert s.depth() == 1 and s.get(0) == "b"  # still queued for the next free worker


def test_governor_bound_is_none_unless_it_holds_workers_back() -> None:
    g = Governor(Profile(name="p", max_concurrency=None), FakeClock(T0), workers=2, queue_size=8)
    assert g.max_active == 2 and g.concurrency_bound is None
    g.apply_profile(Profile(name="q", max_concurrency=2))
    assert g.concurrency_bound is None
    g.apply_profile(Profile(name="r", max_concurrency=1))
    assert g.max_active == 1 and g.concurrency_bound == 1


def test_close_releases_waiting_workers() -> None:
    s = bounded(1, "a")
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(s.get(1)))  # not allowed to take "a"
    t.start()
    wait_until_waiting(s, 1)
    s.close()
    t.join(timeout=30)
    assert not t.is_alive() and got == [None]
    assert s.get(0) is None  # closed: even an allowed worker with a job queued gets none


def test_drain_returns_queued_jobs_in_priority_order_and_leaves_running_ones() -> None:
    s = Scheduler(queue_size=10)
    for job, prio in (("n1", "normal"), ("running", "high"), ("l1", "low"), ("h1", "high"), ("n2", "normal")):
        s.submit(job, prio)
    assert s.get(0) == "running"
    assert s.drain() == ["h1", "n1", "n2", "l1"]
    assert s.depth() == 0 and s.active == 1 and not s.idle()


def test_clients_take_turns_within_a_priority() -> None:
    s = Scheduler(queue_size=20)
    for i in range(5):
        s.submit(f"flood{i}", client=b"A")
    s.submit("b0", client=b"B")
    s.submit("b1", client=b"B")
    s.submit("c0", client=b"C")
    s.submit("h", "high", client=b"A")
    taken = [s.get(0) for _ in range(9)]
    # High first; then one job per client in turn, so B and C never wait behind A's flood.
    assert taken == ["h", "flood0", "b0", "c0", "flood1", "b1", "flood2", "flood3", "flood4"]
    assert s.depth() == 0 and s.idle() is False  # all taken, none done


def test_one_client_cannot_hold_more_than_its_share() -> None:
    s = Scheduler(queue_size=8, max_per_client=3)
    for i in range(3):
        s.submit(i, client=b"A")
    with pytest.raises(Throttled, match="limit 3 per client"):
        s.submit(3, "high", client=b"A")  # the share counts every priority
    s.submit("b", client=b"B")  # others still get in
    assert s.get(0) == 0
    s.submit(3, client=b"A")  # a job taken frees a place in the share
    assert s.depth() == 4
    assert sorted(map(str, s.drain())) == ["1", "2", "3", "b"]
    assert s.depth() == 0
    s.submit("again", client=b"A")  # drain forgot the shares


def test_a_newcomer_to_a_full_queue_pushes_out_the_biggest_holder_newest_job() -> None:
    s = Scheduler(queue_size=4)
    for i in range(4):
        s.submit(f"a{i}", client=b"A")  # alone, A may use the whole queue
    with pytest.raises(Throttled, match="queue full"):
        s.submit("a4", client=b"A")  # nobody holds more than A
    assert s.submit("b0", client=b"B") == "a3"
    assert s.submit("b1", client=b"B") == "a2"
    with pytest.raises(Throttled, match="queue full"):
        s.submit("b2", client=b"B")  # 2 and 2: fair already
    assert s.depth() == 4
    assert [s.get(0) for _ in range(4)] == ["a0", "b0", "a1", "b1"]


def test_queue_full_retry_after_follows_the_measured_service_rate_and_depth() -> None:
    def full(queue_size: int, workers: int, service_s: float, bound: int | None = None) -> int:
        s = Scheduler(queue_size=queue_size, workers=workers)
        s.set_max_active(bound)
        for _ in range(50):  # the moving average settles on a steady service time
            s.submit("x")
            s.get(0)
            s.done(service_s)
        for i in range(queue_size):
            s.submit(i)
        with pytest.raises(Throttled) as err:
            s.submit("over")
        return err.value.retry_after_ms

    assert full(8, 2, 0.100) == pytest.approx(400, rel=0.01)  # 8 queued x 100 ms over 2 workers
    assert full(8, 1, 0.100) == pytest.approx(800, rel=0.01)
    assert full(8, 4, 0.100, bound=1) == pytest.approx(800, rel=0.01)  # a power bound leaves one worker
    assert full(2, 2, 0.002) == pytest.approx(2, abs=1)
    assert full(1000, 1, 5.0) == 10_000  # capped
    # A job that never ran (expired before start) says nothing about the service time.
    s = Scheduler(queue_size=1, workers=1)
    s.submit("a")
    s.get(0)
    s.done(None)
    assert s.service_s == pytest.approx(0.05)
