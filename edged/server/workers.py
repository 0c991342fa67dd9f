"""Worker threads that no request can take away.

Each worker thread runs the daemon's worker loop inside :meth:`WorkerPool._run`,
which logs with a traceback whatever ends the loop while the pool is open.  The
main loop's tick calls :meth:`WorkerPool.check`: a thread that has ended is
started again under the same worker id (the power governor keeps duty cycles
per id).  A worker that keeps dying (``max_restarts`` restarts within
``window_s``) or whose new thread cannot be started is given up: health then
reports the lost capacity and :meth:`WorkerPool.problem` makes the watchdog gate
withhold its ping, so systemd restarts a daemon that can no longer serve at
full strength instead of letting it limp on looking healthy.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from edged.seams import Clock

log = logging.getLogger("edged.server")


class WorkerPool:
    def __init__(self, target: Callable[[int], None], count: int, clock: Clock, *, name: str = "edged-worker",
                 max_restarts: int = 3, window_s: float = 60.0) -> None:
        self.target = target
        self.count = count
        self.clock = clock
        self.name = name
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.threads: list[threading.Thread | None] = [None] * count
        self.restarts = 0  # total, for status
        self._recent: dict[int, deque[float]] = {i: deque() for i in range(count)}
        self._lost: dict[int, str] = {}  # worker id -> why it is not restarted
        self._closed = False

    def start(self) -> None:
        """Start every worker; raises RuntimeError when the OS refuses a thread (a startup failure)."""
        for i in range(self.count):
            self.threads[i] = self._spawn(i)

    def _spawn(self, worker_id: int) -> threading.Thread:
        t = threading.Thread(target=self._run, args=(worker_id,), name=f"{self.name}-{worker_id}", daemon=True)
        t.start()
        return t

    def _run(self, worker_id: int) -> None:
        try:
            self.target(worker_id)
        except BaseException:  # noqa: BLE001 - logged here, restarted by check()
            log.exception("worker %d died; it is restarted on the next tick", worker_id)
            return
        if not self._closed:
            log.error("worker %d stopped while the daemon serves; it is restarted on the next tick", worker_id)

    def check(self, now: float) -> None:
        """Restart every worker thread that has ended (main loop tick)."""
        if self._closed:
            return
        for i, t in enumerate(self.threads):
            if i in self._lost or (t is not None and t.is_alive()):
                continue
            recent = self._recent[i]
            while recent and now - recent[0] > self.window_s:
                recent.popleft()
            if len(recent) >= self.max_restarts:
                self._give_up(i, f"died again after {len(recent)} restarts within {self.window_s:g}s")
                continue
            try:
                self.threads[i] = self._spawn(i)
            except RuntimeError as exc:  # "can't start new thread": out of memory or pids
                self._give_up(i, f"cannot start a thread: {exc}")
                continue
            recent.append(now)
            self.restarts += 1
            log.warning("worker %d restarted", i)

    def _give_up(self, worker_id: int, why: str) -> None:
        self._lost[worker_id] = why
        log.error("worker %d is not restarted (%s): serving capacity is lost until the daemon restarts",
                  worker_id, why)

    def alive(self) -> int:
        return sum(1 for t in self.threads if t is not None and t.is_alive())

    def lost(self) -> list[int]:
        """Worker ids given up for good."""
        return sorted(self._lost)

    def problem(self) -> str:
        """Why serving capacity cannot be restored, or "" while every worker runs or can be restarted."""
        if not self._lost:
            return ""
        return f"{len(self._lost)} of {self.count} workers lost for good: " + "; ".join(
            f"worker {i} {why}" for i, why in sorted(self._lost.items()))

    def close(self) -> None:
        """No more restarts (shutdown): workers end when the scheduler closes."""
        self._closed = True

    def join(self, timeout: float, clock: Callable[[], float]) -> None:
        until = clock() + timeout
        for t in self.threads:
            if t is not None:
                t.join(timeout=max(0.0, until - clock()))
