"""A bounded, prioritised job queue between the main loop and the worker threads.

High-priority jobs are taken first, then normal, then low.  ``submit`` never
blocks: a full queue is answered at once with ``THROTTLED`` so a client never
hangs on a busy daemon.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from edged.errors import Throttled

_ORDER = ("high", "normal", "low")


class Scheduler:
    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._queues: dict[str, deque[Any]] = {p: deque() for p in _ORDER}
        self._cond = threading.Condition()
        self._closed = False
        self.active = 0  # jobs taken by workers and not yet done
        self.max_active: int | None = None  # concurrency bound (power governor); None = workers

    def depth(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def submit(self, job: Any, priority: str = "normal", retry_after_ms: int = 50) -> None:
        """Queue ``job``; raises :class:`Throttled` when the queue is full.
        """
        with self._cond:
            if sum(len(q) for q in self._queues.values()) >= self.queue_size:
                raise Throttled(f"queue full ({self.queue_size} waiting)", retry_after_ms=retry_after_ms)
            self._queues[priority].append(job)
            # With a bound, the one thread notify() picks may be a worker that must not
            # take the job, so every waiter is woken (there are only ``workers`` of them).
            if self.max_active is None:
                self._cond.notify()
            else:
                self._cond.notify_all()

    def get(self, worker_id: int | None = None) -> Any | None:
        """Block until ``worker_id`` may take a job and one is queued; None once closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                job = self._take(worker_id)
                if job is not None:
                    return job
                self._cond.wait()

    def try_get(self, worker_id: int | None = None) -> Any | None:
        """Like :meth:`get` without blocking: the next job ``worker_id`` may take now, or None."""
        with self._cond:
            return None if self._closed else self._take(worker_id)

    def _take(self, worker_id: int | None) -> Any | None:
        # Under a concurrency bound only workers 0 .. max_active-1 take jobs.  The
        # governor keeps each worker's duty-cycle cool-down by id, so letting any
        # free thread take the next job would let two threads alternate on one
        # slot and run it at up to workers x the duty cap.
        bound = self.max_active
        if bound is not None and (self.active >= bound or (worker_id is not None and worker_id >= bound)):
            return None
        for p in _ORDER:
            if self._queues[p]:
                self.active += 1
                return self._queues[p].popleft()
        return None

    def done(self) -> None:
        with self._cond:
            self.active -= 1
            # Only a bound can hold a queued job back from a waiting worker; without
            # one, a finished job frees nothing a waiter could use, and waking the idle
            # worker for nothing costs the finishing one a GIL hand-off on its reply.
            if self.max_active is not None and any(self._queues.values()):
                self._cond.notify_all()

    def alone(self) -> bool:
        """True while at most one job is taken and none waits: that one may use every core."""
        with self._cond:
            return self.active <= 1 and not any(self._queues.values())

    def set_max_active(self, value: int | None) -> None:
        with self._cond:
            self.max_active = value
            self._cond.notify_all()

    def idle(self) -> bool:
        with self._cond:
            return self.active == 0 and not any(self._queues.values())

    def drain(self) -> list[Any]:
        """Remove and return every queued job (highest priority first); running ones are not touched."""
        with self._cond:
            jobs = [job for p in _ORDER for job in self._queues[p]]
            for q in self._queues.values():
                q.clear()
            return jobs

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
