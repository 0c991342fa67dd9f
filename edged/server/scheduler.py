"""A bounded, prioritised, per-client fair job queue between the main loop and the worker threads.

High-priority jobs are taken first, then normal, then low.  Fairness is per
client (one ZeroMQ connection):

* within a priority, the clients with queued jobs take turns (round robin), so
  a request waits behind about one job per busy client, not behind a flood;
* a full queue does not lock newcomers out: a job from a client holding fewer
  queued jobs pushes out the newest queued job of the client holding the most
  (max-min fairness, like a fair queue's drop from the longest flow).  The
  pushed-out job is returned to the caller, which answers it ``THROTTLED``.  A
  client alone may still use the whole queue;
* optionally, ``max_per_client`` caps what one client may hold at all.

``submit`` never blocks: a refusal is ``THROTTLED`` at once, so a client never
hangs on a busy daemon.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from edged.errors import Throttled

_ORDER = ("high", "normal", "low")


#: Seconds one job is assumed to take before any has been measured.
_FIRST_SERVICE_S = 0.05
#: Weight of the newest measurement in the moving average of service time.
_ALPHA = 0.2
#: Bounds of ``retry_after_ms`` on a full queue.
_RETRY_MS = (1, 10_000)


class Scheduler:
    def __init__(self, queue_size: int, max_per_client: int | None = None, *, workers: int = 1) -> None:
        self.queue_size = queue_size
        self.workers = max(1, workers)
        self.service_s = _FIRST_SERVICE_S  # moving average of one job's time in a worker
        self.max_per_client = max_per_client or queue_size
        # priority -> client -> its jobs; dict order is the round-robin ring (the
        # client served goes to the back), so a turn costs O(1).
        self._queues: dict[str, dict[Any, deque[Any]]] = {p: {} for p in _ORDER}
        self._queued = 0
        self._per_client: dict[Any, int] = {}
        # Every method takes the plain lock; the Condition wraps it only for get()'s wait and
        # the notifies.  Condition's own ``with`` is Python-level code, and a lone request
        # takes the lock four times.  Nothing here re-enters it.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closed = False
        self.active = 0  # jobs taken by workers and not yet done
        self.max_active: int | None = None  # concurrency bound (power governor); None = workers

    def depth(self) -> int:
        with self._lock:
            return self._queued

    def depth_for(self, client: Any) -> int:
        """The queue depth ``client`` competes with: a place :meth:`submit` would free for it does not count."""
        with self._lock:
            return self._queued - (1 if self._hog_over(self._per_client.get(client, 0)) is not None else 0)

    def _hog_over(self, held: int) -> Any | None:
        """The client holding the most queued jobs, if it holds more than ``held`` + 1."""
        hog = max(self._per_client, key=self._per_client.__getitem__, default=None)
        return hog if hog is not None and self._per_client[hog] > held + 1 else None

    def submit(self, job: Any, priority: str = "normal", retry_after_ms: int | None = None, client: Any = b"",
               capacity: int | None = None) -> Any | None:
        """Queue ``job`` for ``client``; returns the job it pushed out of a full queue, if any.

        ``retry_after_ms`` of a refusal (unless given): the time the workers need to
        work through the jobs ahead (the client's own, or the whole queue) at the
        service rate measured so far, so a client that waits that long finds room.

        ``capacity`` (at most ``queue_size``) is the queue length this job may find,
        e.g. a power profile's limit.  Raises :class:`Throttled` when ``client``
        already holds ``max_per_client`` jobs, or when the queue is full and no client
        holds more than ``client`` + 1: then there is nobody fairer to take the place from.
        """
        full = self.queue_size if capacity is None else min(capacity, self.queue_size)
        with self._lock:
            held = self._per_client.get(client, 0)
            if held >= self.max_per_client < self.queue_size:  # a cap below the queue's own
                raise Throttled(f"this client already has {held} requests queued (limit {self.max_per_client} "
                                "per client)", retry_after_ms=self._retry_after_ms(held, retry_after_ms))
            evicted = None
            if self._queued >= full:
                hog = self._hog_over(held)
                if hog is None:
                    raise Throttled(f"queue full ({self._queued} waiting)",
                                    retry_after_ms=self._retry_after_ms(self._queued, retry_after_ms))
                evicted = self._evict(hog)
            ring = self._queues[priority]
            jobs = ring.get(client)
            if jobs is None:
                jobs = ring[client] = deque()
            jobs.append(job)
            self._per_client[client] = held + 1
            self._queued += 1
            # With a bound, the one thread notify() picks may be a worker that must not
            # take the job, so every waiter is woken (there are only ``workers`` of them).
            if self.max_active is None:
                self._cond.notify()
            else:
                self._cond.notify_all()
            return evicted

    def _evict(self, client: Any) -> Any:
        # The newest job of the client's lowest priority: the one it can best spare.
        for p in reversed(_ORDER):
            jobs = self._queues[p].get(client)
            if jobs:
                job = jobs.pop()
                if not jobs:
                    del self._queues[p][client]
                self._release(client)
                return job
        raise AssertionError(f"client {client!r} counted as holding jobs but has none")  # pragma: no cover

    def get(self, worker_id: int | None = None) -> Any | None:
        """Block until ``worker_id`` may take a job and one is queued; None once closed."""
        with self._lock:
            while True:
                if self._closed:
                    return None
                job = self._take(worker_id)
                if job is not None:
                    return job
                self._cond.wait()

    def _take(self, worker_id: int | None) -> Any | None:
        # Under a concurrency bound only workers 0 .. max_active-1 take jobs.  The
        # governor keeps each worker's duty-cycle cool-down by id, so letting any
        # free thread take the next job would let two threads alternate on one
        # slot and run it at up to workers x the duty cap.
        bound = self.max_active
        if bound is not None and (self.active >= bound or (worker_id is not None and worker_id >= bound)):
            return None
        for p in _ORDER:
            ring = self._queues[p]
            if ring:
                client = next(iter(ring))
                jobs = ring.pop(client)
                job = jobs.popleft()
                if jobs:
                    ring[client] = jobs  # to the back of the ring: the next client's turn
                self._release(client)
                self.active += 1
                return job
        return None

    def _release(self, client: Any) -> None:
        self._queued -= 1
        held = self._per_client[client] - 1
        if held:
            self._per_client[client] = held
        else:
            del self._per_client[client]

    def _retry_after_ms(self, ahead: int, given: int | None = None) -> int:
        if given is not None:
            return given
        parallel = min(self.max_active or self.workers, self.workers)
        ms = round(1000 * self.service_s * ahead / max(1, parallel))
        return max(_RETRY_MS[0], min(_RETRY_MS[1], ms))

    def done(self, service_s: float | None = None) -> None:
        """A worker finished a job; ``service_s`` is how long it took (None: not run, e.g. expired)."""
        with self._lock:
            self.active -= 1
            if service_s is not None and service_s >= 0:
                self.service_s += _ALPHA * (service_s - self.service_s)
            # Only a bound can hold a queued job back from a waiting worker; without
            # one, a finished job frees nothing a waiter could use, and waking the idle
            # worker for nothing costs the finishing one a GIL hand-off on its reply.
            if self.max_active is not None and self._queued:
                self._cond.notify_all()

    def take_if_idle(self) -> bool:
        """Count a job the caller runs itself, without queueing it, if nothing else is taken or
        queued (:meth:`idle`); end it with :meth:`done`.  One look under the lock: nothing can
        come between the check and the count."""
        with self._lock:
            if self.active or self._queued:
                return False
            self.active = 1
            return True

    def alone(self) -> bool:
        """True while at most one job is taken and none waits: that one may use every core."""
        with self._lock:
            return self.active <= 1 and not self._queued

    def set_max_active(self, value: int | None) -> None:
        with self._lock:
            self.max_active = value
            self._cond.notify_all()

    def idle(self) -> bool:
        """Nothing taken, nothing queued: a job taken now (:meth:`take_if_idle`) runs alone.

        (Every concurrency bound is at least 1, so an idle scheduler always lets one run.)
        """
        with self._lock:
            return self.active == 0 and not self._queued

    def drain(self) -> list[Any]:
        """Remove and return every queued job (highest priority first); running ones are not touched."""
        with self._lock:
            jobs = [job for p in _ORDER for q in self._queues[p].values() for job in q]
            for ring in self._queues.values():
                ring.clear()
            self._per_client.clear()
            self._queued = 0
            return jobs

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cond.notify_all()
