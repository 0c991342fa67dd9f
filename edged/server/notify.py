"""sd_notify: tell systemd when edged is ready, reloading, stopping, and alive.

A dependency-free implementation of the ``sd_notify(3)`` datagram protocol.
Under systemd (``Type=notify``) the service manager sets ``$NOTIFY_SOCKET`` to
an ``AF_UNIX`` datagram socket; each message is newline-separated
``KEY=VALUE`` assignments.  Outside systemd every method here is a no-op, so
the daemon calls them unconditionally.

Messages edged sends:

``READY=1``
    startup finished (sockets bound, models loaded); ``systemctl start``
    returns.  Sent again after a reload completes.
``RELOADING=1`` + ``MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>``
    a reload (SIGHUP or ``edged ctl reload``) began; must be followed by
    ``READY=1`` when it ends, whether it succeeded or kept the old state.
    systemd >= 253 with ``Type=notify-reload`` *requires* ``MONOTONIC_USEC``
    next to ``RELOADING=1`` (it uses it to tell this reload from an older one);
    earlier versions ignore the extra field, so we always send it.
``STOPPING=1``
    graceful drain began (SIGTERM or ``edged ctl quit``).
``STATUS=<text>``
    one line shown by ``systemctl status edged``.
``WATCHDOG=1``
    keep-alive; sent by the main loop's tick only when :class:`WatchdogGate`
    says the daemon is really healthy, so a wedged worker leads to a restart.
``EXTEND_TIMEOUT_USEC=<µs>``
    ask for more time in the current start/stop phase: sent before each model
    loads at startup and when the drain starts (grace period + join margin).

Errors sending a notification are never raised: the daemon keeps serving even
if systemd went away.  The first failure is logged as a warning, later ones at
debug level, so a broken socket does not flood the journal.

``vsock:`` addresses (systemd >= 254, for VMs) are not supported: they are
logged once and notifications are disabled.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

log = logging.getLogger("edged.server.notify")


class _MonotonicClock(Protocol):
    def monotonic(self) -> float: ...


def _monotonic_usec() -> int:
    # systemd compares MONOTONIC_USEC with its own CLOCK_MONOTONIC; time.monotonic()
    # is CLOCK_MONOTONIC on Linux too, but ask for it by name to be explicit.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _socket_address(value: str) -> str | bytes | None:
    """Turn ``$NOTIFY_SOCKET`` into a ``sendto`` address, or None if unusable."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Abstract namespace: a leading NUL byte instead of '@', no trailing NUL.
        return b"\0" + value[1:].encode()
    return None


def _status_field(status: str | None) -> tuple[str, ...]:
    return () if status is None else (f"STATUS={status}",)


class Notifier:
    """Sends sd_notify messages; every method is a no-op when not under systemd.

    Build it with :meth:`from_env`.  Thread-safe (one lock around the socket),
    though edged only calls it from the main loop.
    """

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog is enabled only if ``WATCHDOG_USEC`` is a positive integer
        and ``WATCHDOG_PID`` is unset or equal to our pid (systemd sets it so a
        child that inherited the environment does not ping for its parent).
        Never raises: bad values are logged and treated as absent.
        """
        raw = environ.get("NOTIFY_SOCKET", "")
        address = _socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or @abstract name; systemd notifications disabled", raw)
        watchdog_usec: int | None = None
        wd_raw = environ.get("WATCHDOG_USEC", "")
        if wd_raw:
            try:
                watchdog_usec = int(wd_raw)
            except ValueError:
                log.warning("WATCHDOG_USEC=%r is not an integer; watchdog disabled", wd_raw)
            pid_raw = environ.get("WATCHDOG_PID", "")
            if watchdog_usec and pid_raw:
                try:
                    if int(pid_raw) != os.getpid():
                        watchdog_usec = None
                except ValueError:
                    log.warning("WATCHDOG_PID=%r is not an integer; watchdog disabled", pid_raw)
                    watchdog_usec = None
        return cls(address, watchdog_usec)

    # -- state ------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None if off.

        Half the timeout is what sd_watchdog_enabled(3) recommends: one late
        tick must not be enough to get the service killed.
        """
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    # -- messages ---------------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status_field(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``; call :meth:`ready` when the reload ends."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", *_status_field(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status_field(status))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``; a no-op unless the watchdog is enabled for this process."""
        if self._watchdog_usec is None:
            return False
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask systemd for ``seconds`` more in the current start/stop phase."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; True if it was sent.

        Newlines inside a value would start a new assignment, so they are
        replaced by spaces (STATUS text comes from error messages).
        """
        if self._address is None or not fields:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    # Non-blocking: a datagram queue holds only net.unix.max_dgram_qlen (often 10)
                    # messages, and a blocking sendto() to a reader that is not reading (a stalled
                    # manager, a test harness) would stop the main loop with it.
                    self._sock = socket.socket(socket.AF_UNIX,
                                               socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
                self._sock.sendto(message, self._address)
                return True
            except BlockingIOError:
                # The reader's queue is full: drop this one (a later READY/WATCHDOG supersedes it).
                log.log(logging.DEBUG if self._warned else logging.WARNING,
                        "sd_notify to %r dropped: the notify socket's queue is full", self._address)
                self._warned = True
                return False
            except OSError as exc:
                # Never raise: a dead notify socket must not take the daemon down.
                level = logging.DEBUG if self._warned else logging.WARNING
                self._warned = True
                log.log(level, "sd_notify to %r failed: %s (further failures logged at debug level)",
                        self._address, exc)
                self._close_locked()
                return False

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class WatchdogGate:
    """Decides whether the daemon is healthy enough to ping the systemd watchdog.

    The main loop's tick calls :meth:`maybe_ping` (or :meth:`due` and
    :meth:`should_ping` itself).  Pinging only from the tick already covers a
    wedged main loop; the gate adds two checks a live loop alone cannot show:

    * a worker stuck in a single ``invoke()`` for longer than ``stuck_invoke_s``
      (a hung delegate, e.g. an Edge TPU that stopped answering: the thread
      cannot be cancelled, so a restart is the only cure);
    * the loop's last full iteration is older than ``max_loop_age_s`` (the tick
      runs but the loop body is stuck elsewhere, e.g. in a timer);
    * ``capacity_problem()`` returns a reason: serving capacity was lost and cannot
      be restored in process (a worker thread that could not be restarted).

    ``interval_s`` is the ping cadence (use :meth:`Notifier.watchdog_interval`,
    already half of ``WatchdogSec``).  ``longest_invoke`` returns the seconds
    the longest-running current ``invoke()`` has taken so far (0.0 when all
    workers are idle); ``last_tick`` returns the monotonic time of the loop's
    last iteration.  Both are called from the main loop only.
    """

    def __init__(
        self,
        clock: _MonotonicClock,
        interval_s: float,
        longest_invoke: Callable[[], float],
        stuck_invoke_s: float,
        last_tick: Callable[[], float] | None = None,
        max_loop_age_s: float | None = None,
        capacity_problem: Callable[[], str] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.clock = clock
        self.interval_s = interval_s
        self.longest_invoke = longest_invoke
        self.stuck_invoke_s = stuck_invoke_s
        self.last_tick = last_tick
        self.max_loop_age_s = interval_s if max_loop_age_s is None else max_loop_age_s
        self.capacity_problem = capacity_problem
        self.last_ping: float | None = None
        self._withholding = False
        #: Why the last should_ping() said no, or "" when it said yes.
        self.reason = ""

    def due(self, now: float | None = None) -> bool:
        """True when ``interval_s`` has passed since the last ping (or none was sent)."""
        now = self.clock.monotonic() if now is None else now
        return self.last_ping is None or now - self.last_ping >= self.interval_s

    def should_ping(self, now: float | None = None) -> bool:
        """True unless a worker is stuck in one invoke or the loop has stalled.

        Sets :attr:`reason` to a one-line explanation when it returns False.
        """
        now = self.clock.monotonic() if now is None else now
        longest = self.longest_invoke()
        if longest > self.stuck_invoke_s:
            self.reason = f"a worker has been in one invoke() for {longest:.1f}s (> stuck_invoke_s={self.stuck_invoke_s:g})"
            return False
        if self.last_tick is not None:
            age = now - self.last_tick()
            if age > self.max_loop_age_s:
                self.reason = f"main loop last ran {age:.1f}s ago (> {self.max_loop_age_s:g}s)"
                return False
        lost = self.capacity_problem() if self.capacity_problem is not None else ""
        if lost:
            self.reason = lost
            return False
        self.reason = ""
        return True

    def maybe_ping(self, notifier: Notifier, now: float | None = None) -> bool:
        """Ping ``notifier`` if due and healthy; True if a ping was sent.

        When unhealthy the ping is withheld (systemd then kills and restarts
        us after ``WatchdogSec``); the reason is logged once per episode.
        """
        now = self.clock.monotonic() if now is None else now
        if not self.due(now):
            return False
        if not self.should_ping(now):
            if not self._withholding:
                self._withholding = True
                log.error("withholding systemd watchdog ping: %s", self.reason)
                notifier.status(f"unhealthy: {self.reason}")
            return False
        if self._withholding:
            self._withholding = False
            log.warning("healthy again; resuming systemd watchdog pings")
        self.last_ping = now
        notifier.watchdog()
        return True
