"""Admission control for the current power profile: rate, queue, priority, concurrency, duty cycle.

API
---
``Governor(profile, clock=None, *, workers=1, queue_size=64, shed_retry_ms=5000)``
    ``workers`` and ``queue_size`` are the server's own (hard) limits; the
    profile can only lower them.
``Governor.admit(priority="normal", now=None, queue_depth=0) -> Admission``
    Called by the main loop before queueing a request; ``queue_depth`` is the
    scheduler's current depth.  Raises ValueError for an unknown priority
    (the protocol layer has already rejected those).
``Governor.wait_before_invoke(worker_id, now=None) -> float``
    Seconds the worker must wait before its next ``invoke()`` (duty cycle).
``Governor.record_invoke(worker_id, started, duration) -> None``
    Called by the worker after each ``invoke()``.
``Governor.apply_profile(profile) -> None``
    Switch limits; the bucket keeps its tokens (clamped to the new burst).
``Governor.queue_full_retry_ms(now=None) -> int``
    The ``retry_after_ms`` of a queue refusal (decision 2 below), for the
    server's other answers to a full queue (a job pushed out of it).
``Governor.max_active`` / ``queue_limit`` / ``counters()`` / ``status()``
    Concurrency bound for ``Scheduler.set_max_active``, the profile's queue
    limit, the throttled/shed/admitted counts, a JSON-able snapshot.
``expired(deadline_at, now) -> bool``
    True when a request's deadline has passed (None = no deadline).

Decisions, in order (the first that refuses wins; nothing is consumed on refusal)
-----------------------------------------------------------------------------
1. **Priority floor** - a priority below the profile's ``min_priority`` is
   refused (*shed*), ``retry_after_ms = shed_retry_ms``: profiles change on the
   policy's sampling period, so retrying sooner is pointless.
2. **Queue** (*shed*) - ``high`` is admitted up to the server's hard
   ``queue_size``; ``normal`` up to the profile's ``queue_size``; ``low`` only
   while the queue is below half of that, so low traffic is shed first and
   leaves room for the rest.  ``retry_after_ms`` is about the time one queued
   job takes to clear at the current duty cycle and concurrency.
3. **Token bucket** (*throttled*) for ``max_rps`` with burst ``max(1, rps)``:
   ``normal`` needs one token; ``low`` needs the bucket at least half full
   (and one token), so under pressure low is refused first; ``high`` bypasses
   the bucket - it takes a token if one is there (high traffic still counts
   toward the rate) but is never refused by it.  ``retry_after_ms`` is the
   exact refill time to the level that priority needs, rounded up.

The **duty cycle** is not an admission check: every admitted request,
``high`` included, runs only when its worker's cool-down has elapsed.  After an
inference of ``t`` seconds the worker may not start another until
``t * (1/duty - 1)`` after it ended, i.e. until ``started + t / duty``; so a
duty of 0.25 keeps each worker's inference to a quarter of wall time.  The
cool-down is recomputed from the last invoke under the profile in effect, so
switching to ``performance`` frees waiting workers at once.

The **concurrency bound** is ``max_active`` (``min(workers, max_concurrency)``);
the server passes it to its scheduler, which already owns the in-flight count.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Literal

from edged.power.config import PRIORITY_RANK, Profile
from edged.seams import Clock

# Before any invoke has been measured, assume a small model on a small CPU.
_DEFAULT_INVOKE_S = 0.05
_EWMA_ALPHA = 0.2


@dataclass(frozen=True)
class Admission:
    """The answer to :meth:`Governor.admit`.

    ``counter`` is which statistic a refusal belongs to: ``"throttled"`` (rate
    limit) or ``"shed"`` (priority floor or queue).  Both go on the wire as
    ``THROTTLED`` with ``retry_after_ms``.
    """

    ok: bool
    retry_after_ms: int | None
    reason: str
    counter: Literal["throttled", "shed"] | None = None


_ADMITTED = Admission(True, None, "admitted")  # frozen: one instance serves every admission


def expired(deadline_at: float | None, now: float) -> bool:
    """True if ``deadline_at`` (same clock as ``now``) has passed; None never expires."""
    return deadline_at is not None and now >= deadline_at


def _ceil_ms(seconds: float) -> int:
    # round() first so float noise (0.1 / 0.2 * 1000 = 500.00000000000006) does not add a millisecond.
    return max(1, math.ceil(round(seconds * 1000.0, 6)))


class Governor:
    """Thread-safe admission control and duty-cycle pacing for one power profile at a time."""

    def __init__(self, profile: Profile, clock: Clock | None = None, *, workers: int = 1, queue_size: int = 64,
                 shed_retry_ms: int = 5000) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        self.clock = clock or Clock()
        self.workers = workers
        self.queue_size = queue_size
        self.shed_retry_ms = shed_retry_ms
        self._lock = threading.Lock()
        self._profile = profile
        self._tokens = 0.0
        self._refilled_at = self.clock.monotonic()
        self._last_invoke: dict[int, tuple[float, float]] = {}  # worker -> (started, duration)
        self._avg_invoke_s = _DEFAULT_INVOKE_S
        self._counts = {"admitted": 0, "throttled": 0, "shed": 0}
        self._reset_bucket(full=True)

    # -- profile -----------------------------------------------------------------------------

    @property
    def profile(self) -> Profile:
        with self._lock:
            return self._profile

    def apply_profile(self, profile: Profile) -> None:
        """Switch to ``profile``'s limits; tokens are kept (clamped), an unlimited→limited switch starts full."""
        with self._lock:
            now = self.clock.monotonic()
            was_limited = self._profile.max_rps is not None
            self._refill(now)
            self._profile = profile
            self._reset_bucket(full=not was_limited)

    @property
    def max_active(self) -> int:
        """How many workers may run inference at once under the current profile."""
        with self._lock:
            limit = self._profile.max_concurrency
            return self.workers if limit is None else min(self.workers, limit)

    @property
    def concurrency_bound(self) -> int | None:
        """``max_active`` when it holds some workers back, else None (for ``Scheduler.set_max_active``).

        Without a bound the scheduler wakes one worker per job instead of all of them.
        """
        bound = self.max_active
        return bound if bound < self.workers else None

    @property
    def queue_limit(self) -> int:
        """The profile's queue limit for ``normal`` requests (never above the server's)."""
        with self._lock:
            return self._queue_limit()

    # -- admission ---------------------------------------------------------------------------

    def admit(self, priority: str = "normal", now: float | None = None, queue_depth: int = 0) -> Admission:
        """Admit or refuse one request; raises ValueError for a priority not in low/normal/high."""
        if priority not in PRIORITY_RANK:
            raise ValueError(f"priority must be one of {', '.join(PRIORITY_RANK)}, got {priority!r}")
        with self._lock:
            now = self.clock.monotonic() if now is None else now
            p = self._profile
            if PRIORITY_RANK[priority] < PRIORITY_RANK[p.min_priority]:
                return self._refuse("shed", self.shed_retry_ms,
                                    f"priority {priority} is below {p.min_priority} in profile {p.name}")
            allowed = self._allowance(priority)
            if queue_depth >= allowed:
                return self._refuse("shed", self._drain_ms(now),
                                    f"queue has {queue_depth} waiting, {priority} limit is {allowed} in profile {p.name}")
            if p.max_rps is not None:
                self._refill(now)
                burst = self._burst()
                if priority == "high":
                    self._tokens = max(0.0, self._tokens - 1.0)
                else:
                    need = 1.0 if priority == "normal" else max(1.0, burst / 2.0)
                    if self._tokens < need:
                        wait = (need - self._tokens) / p.max_rps
                        return self._refuse("throttled", _ceil_ms(wait),
                                            f"rate limit {p.max_rps:g}/s in profile {p.name}"
                                            + (" (low needs the bucket half full)" if priority == "low" else ""))
                    self._tokens -= 1.0
            self._counts["admitted"] += 1
            return _ADMITTED

    # -- duty cycle --------------------------------------------------------------------------

    def wait_before_invoke(self, worker_id: int, now: float | None = None) -> float:
        """Seconds ``worker_id`` must wait before starting its next inference (0.0 = go)."""
        with self._lock:
            now = self.clock.monotonic() if now is None else now
            return self._wait(worker_id, now)

    def record_invoke(self, worker_id: int, started: float, duration: float) -> None:
        """Record that ``worker_id`` ran an inference from ``started`` (monotonic) for ``duration`` s.

        Worker ids are ``0 .. workers-1``; the queue-full retry estimate looks at
        the first ``max_active`` of them.  Raises ValueError for a negative duration.
        """
        if duration < 0:
            raise ValueError(f"duration must be >= 0, got {duration!r}")
        with self._lock:
            self._last_invoke[worker_id] = (started, duration)
            self._avg_invoke_s += _EWMA_ALPHA * (duration - self._avg_invoke_s)

    # -- reporting ---------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Admitted, throttled (rate limit) and shed (priority floor, queue) counts since start."""
        with self._lock:
            return dict(self._counts)

    def status(self) -> dict[str, Any]:
        """JSON-able snapshot for the ``power`` op."""
        with self._lock:
            now = self.clock.monotonic()
            self._refill(now)
            limited = self._profile.max_rps is not None
            return {
                "profile": self._profile.name,
                "tokens": round(self._tokens, 3) if limited else None,
                "burst": self._burst() if limited else None,
                "max_active": self.workers if self._profile.max_concurrency is None
                else min(self.workers, self._profile.max_concurrency),
                "queue_limit": self._queue_limit(),
                "duty_cycle": self._profile.duty_cycle,
                "avg_invoke_ms": round(self._avg_invoke_s * 1000.0, 3),
                **self._counts,
            }

    # -- internals (lock held) ---------------------------------------------------------------

    def _burst(self) -> float:
        assert self._profile.max_rps is not None
        return max(1.0, self._profile.max_rps)

    def _reset_bucket(self, full: bool) -> None:
        if self._profile.max_rps is None:
            self._tokens = 0.0
            return
        self._tokens = self._burst() if full else min(self._tokens, self._burst())

    def _refill(self, now: float) -> None:
        # Requests may carry a "now" taken slightly earlier on another thread; never refill backwards.
        elapsed = max(0.0, now - self._refilled_at)
        self._refilled_at = max(self._refilled_at, now)
        if self._profile.max_rps is not None:
            self._tokens = min(self._burst(), self._tokens + elapsed * self._profile.max_rps)

    def queue_full_retry_ms(self, now: float | None = None) -> int:
        """``retry_after_ms`` for a request the queue has no room for: about the time one queued job takes to clear."""
        with self._lock:
            return self._drain_ms(self.clock.monotonic() if now is None else now)

    def queue_allowance(self, priority: str) -> int:
        """How many queued requests a request of ``priority`` may find and still be admitted."""
        with self._lock:
            return self._allowance(priority)

    def _allowance(self, priority: str) -> int:
        if priority == "high":
            return self.queue_size
        limit = self._queue_limit()
        return limit if priority == "normal" else max(1, limit // 2)

    def _queue_limit(self) -> int:
        q = self._profile.queue_size
        return self.queue_size if q is None else min(self.queue_size, q)

    def _wait(self, worker_id: int, now: float) -> float:
        last = self._last_invoke.get(worker_id)
        if last is None:
            return 0.0
        started, duration = last
        # ready = end + duration * (1/duty - 1) = started + duration / duty
        return max(0.0, started + duration / self._profile.duty_cycle - now)

    def _drain_ms(self, now: float) -> int:
        active = self.workers if self._profile.max_concurrency is None else min(self.workers,
                                                                                self._profile.max_concurrency)
        earliest = min(self._wait(w, now) for w in range(active))
        per_job = self._avg_invoke_s / self._profile.duty_cycle / active
        return _ceil_ms(max(earliest, per_job))

    def _refuse(self, counter: Literal["throttled", "shed"], retry_ms: int, reason: str) -> Admission:
        self._counts[counter] += 1
        return Admission(False, retry_ms, reason, counter)


__all__ = ["Admission", "Governor", "expired"]
