"""The daemon's lifecycle: ``startup()`` → ``main_loop()`` → ``shutdown()``.

One main thread owns every ZeroMQ socket.  It reads requests, dispatches them
(commands answer at once, or hand a job to the :class:`Scheduler`), forwards
replies that worker threads leave in an outbox (waking it through a socketpair), and runs periodic
housekeeping on its tick.  Signal handlers only enqueue a command and wake the
loop through ``signal.set_wakeup_fd``; the loop does the work, so SIGTERM runs
exactly the code of ``edged ctl quit`` and SIGHUP that of ``edged ctl reload``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

import edged
from edged import config as config_mod
from edged import protocol
from edged.config import Config
from edged.curve import is_tcp
from edged.errors import (
    ConfigError, DeadlineExceeded, EdgedError, ErrorCode, InternalError, RequestError, RetryableError,
    Throttled,
)
from edged.repository.manager import ModelManager
from edged.repository.state import STATE_DIR
from edged.repository.watcher import RepositoryWatcher
from edged.runtime.backends import Backend, select_backend
from edged.seams import Clock
from edged.server.api import Request
from edged.server.auth import CurveAuth, zap_domain
from edged.server.dispatch import dispatch, encode_reply, error_reply
from edged.server.frigate import FrigateEndpoint
from edged.server.instance import REPOSITORY_LOCK, RUNTIME_LOCK, InstanceLock
from edged.server.metrics import Stats, prometheus_text, serve_metrics
from edged.server.notify import Notifier, WatchdogGate
from edged.server.powerctl import DEFERRED, PowerController, ProfileChange
from edged.server.scheduler import Scheduler
from edged.server.workers import WorkerPool
from edged.states import DaemonState

log = logging.getLogger("edged.server")



class Job:
    __slots__ = ("req", "model", "deadline", "top_k", "priority", "owes_token", "claim")

    def __init__(self, req: Request, model: Any, deadline: float | None, top_k: int, priority: str,
                 owes_token: bool) -> None:
        self.req = req
        self.model = model
        self.deadline = deadline
        self.top_k = top_k
        self.priority = priority
        # Admitted over the rate limit because it asked to ``wait``: its worker takes the
        # token (PowerController.pace), so it never runs inline.
        self.owes_token = owes_token
        # A Frigate frame is answered by whoever takes this first: a worker, or the
        # main loop when the frame is still queued at its deadline (FrigateEndpoint.expire).
        self.claim = threading.Lock() if req.endpoint == "frigate" else None


#: ``[server]`` keys a reload applies at once; a change to any other is reported as
#: ``restart_needed`` (sockets, workers, the metrics server and the log format are
#: set up once; the ZeroMQ message-size cap is a socket option taken at bind).
_LIVE_SERVER_KEYS = frozenset({"log_level", "grace_period_s", "queue_size", "max_queued_per_client",
                               "max_header_bytes", "max_image_bytes", "max_image_pixels", "image_formats",
                               "stuck_invoke_s", "inline_max_ms"})

#: Sockets that are CURVE servers on tcp:// when [security] has a key (not Frigate's: it cannot do CURVE).
_CURVE_SOCKETS = frozenset({"predict", "control", "events"})

#: ``[frigate]`` keys a reload applies at once; the others are the socket, bound at start.
_FRIGATE_LIVE_KEYS = ("model", "min_score", "budget_ms", "accept_pushed_models")
_FRIGATE_SOCKET_KEYS = ("endpoint", "socket_group", "socket_mode", "allow_tcp")

#: Seconds shutdown waits for the worker and swap threads after the grace period.
_JOIN_S = 2.0

#: Time asked of systemd (EXTEND_TIMEOUT_USEC) before each model loads at startup: a
#: large model with a delegate can take longer than the unit's TimeoutStartSec alone.
_LOAD_EXTEND_S = 60.0
#: Past the grace period, shutdown joins the swap thread and the workers (_JOIN_S
#: each) and lingers on the sockets; the stop timeout asked for covers that too.
_STOP_MARGIN_S = 3 * _JOIN_S + 5.0
#: The GIL switch interval while serving (CPython's default is 5 ms).  A worker or the
#: swap thread running Python keeps the GIL that long before the main loop, woken by a
#: request or a reply, gets it; 0.5 ms bounds that wait.  At concurrency 4 it gave 3-6 %
#: more requests per second in alternating A/B windows (7 of 10), within the host's noise
#: but in one direction; no change at c=1 or in swaps (docs/benchmarks.md, round 3).
_GIL_SWITCH_S = 0.0005

# The request path calls the socket's own methods with int flags.  pyzmq's Python
# conveniences (enum flag arithmetic, recv_multipart's RCVMORE look-ups, send_multipart's
# per-part checks and send's draft-socket options) cost a lone request about 30
# interpreted calls, each from a cold cache after the invoke() (docs/benchmarks.md, round 5).
_EVENTS, _POLLIN, _SNDMORE, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.SNDMORE), int(zmq.NOBLOCK)
_send_part = zmq.backend.Socket.send  # below the sugar layer: no routing_id/group, which only draft sockets use


def _waiting(sock: zmq.Socket) -> bool:
    """Whether a whole message waits on ``sock`` (ZMQ_EVENTS: far cheaper than ending on zmq.Again)."""
    return bool(sock.getsockopt(_EVENTS) & _POLLIN)


def _recv_message(sock: zmq.Socket) -> list[zmq.Frame]:
    """The next message's frames, zero-copy; raises zmq.Again when none waits."""
    frame = sock.recv(_NOBLOCK, copy=False)
    frames = [frame]
    while frame.more:  # a message arrives whole: its other parts are there too
        frame = sock.recv(_NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def _send_message(sock: zmq.Socket, parts: list[Any]) -> None:
    """Send ``parts`` as one message, zero-copy where pyzmq's copy threshold allows."""
    for part in parts:  # a part that is not a buffer fails here, before the first part leaves
        if not isinstance(part, (zmq.Frame, bytes)):
            memoryview(part)
    last = len(parts) - 1
    for i, part in enumerate(parts):
        try:
            _send_part(sock, part, 0 if i == last else _SNDMORE, False)
        except BaseException:
            if i:  # parts already left: end the message, or the next reply would be glued onto it
                try:
                    _send_part(sock, b"", 0, False)
                except zmq.ZMQError:
                    pass
            raise


class _Timer:
    __slots__ = ("interval", "fn", "due", "name")

    def __init__(self, name: str, interval: float, fn: Callable[[float], None], due: float) -> None:
        self.name, self.interval, self.fn, self.due = name, interval, fn, due


class Daemon:
    def __init__(self, config: Config, *, clock: Clock | None = None, config_path: str | None = None,
                 overrides: dict[str, Any] | None = None, notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides or {}
        self.clock = clock or Clock()
        self.state = DaemonState.STARTING
        self.started_at = self.clock.monotonic()
        self.last_loop = self.started_at
        self.profile = "performance"
        self._pending: deque[str] = deque()
        self._timers: list[_Timer] = []
        self.workers: WorkerPool | None = None
        self.busy_since: dict[int, float | None] = {}
        self.inline_runs = 0  # requests the main loop ran itself (see _take_inline)
        self._stop_reason = ""
        self._drain_deadline: float | None = None
        self._ipc_files: list[Path] = []
        self.notifier = notifier or Notifier.from_env()
        self.metrics_server: Any = None
        self._events: deque[dict[str, Any]] = deque()
        self._outbox: deque[tuple[str, list[Any], bytes, list[Any]]] = deque()
        self.watcher: RepositoryWatcher | None = None
        self.updater: Any = None  # edged.update.service.UpdateService when [update] url is set
        self.watchdog_gate: WatchdogGate | None = None
        # Every resource the daemon holds, declared here and acquired by startup(); close()
        # releases whatever exists, so a failed startup and a normal stop take one path.
        # Stats before models: a rollback at boot (crash during probation) is published and counted.
        self.scheduler = Scheduler(config.server.queue_size, config.max_queued_per_client,
                                   workers=config.server.workers)
        self.stats = Stats(queue_depth=self.scheduler.depth)
        self.backend: Backend | None = None
        self.models: ModelManager | None = None
        self.power: PowerController | None = None
        self.ctx: zmq.Context | None = None
        self.events_sock: zmq.Socket | None = None
        self.predict_sock: zmq.Socket | None = None
        self.control_sock: zmq.Socket | None = None
        self._reply_socks: dict[str, zmq.Socket] = {}  # endpoint name → the socket its replies go out on
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        # Reply ids for feedback: random per daemon start, so an id never matches across restarts.
        self._request_prefix = secrets.token_hex(4)
        self._request_seq = itertools.count(1)
        self.auth: CurveAuth | None = None  # the ZAP handler when CURVE is on
        self.instance = InstanceLock()
        self.frigate: FrigateEndpoint | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def startup(self) -> None:
        """Load models, bind sockets, start workers.  Raises EdgedError on failure."""
        cfg = self.config
        t0 = time.monotonic()
        self._claim()  # before anything touches a socket path or the repository's state
        self.backend = select_backend(cfg.runtime.backend)
        log.info("edged %s starting: runtime %s, delegate %s, config %s", edged.__version__,
                 self.backend.describe(), cfg.runtime.delegate, cfg.source)
        log.info("parallelism: %s", protocol.describe_parallelism(self.parallelism()))
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.models = ModelManager(cfg, self.backend, clock=self.clock, emit=self.publish)
        self.models.start(before_load=lambda name: self.notifier.extend_timeout(_LOAD_EXTEND_S))
        self.power = PowerController(cfg.power, self.clock, workers=cfg.server.workers,
                                     queue_size=cfg.server.queue_size)
        self.apply_power(self.power.initial)
        self.ctx = zmq.Context()
        if cfg.curve is not None:
            self.auth = CurveAuth(self.ctx, cfg.allowed_keys, cfg.control_keys)
        if cfg.events_endpoint:
            self.events_sock = self._bind("events", cfg.events_endpoint, cfg.server.predict_socket_mode, zmq.PUB)
        self.predict_sock = self._bind("predict", cfg.endpoint, cfg.server.predict_socket_mode)
        self.control_sock = self._bind("control", cfg.control_endpoint, cfg.server.control_socket_mode)
        if cfg.frigate.endpoint:
            self.frigate = FrigateEndpoint(self, cfg.frigate)
            self.frigate.sock = self._bind("frigate", cfg.frigate.endpoint, cfg.frigate.socket_mode)
            self._reply_socks["frigate"] = self.frigate.sock
        self._reply_socks.update(predict=self.predict_sock, control=self.control_sock)
        if cfg.repository.watch:
            self.watcher = RepositoryWatcher(self.models.root, self.clock, self.wake)
            self.watcher.start()
        self.models.scan()
        self.add_timer("probation", cfg.server.tick_s, self.models.check_probation)
        if cfg.update.url:
            from edged.server.updatehost import DaemonUpdateHost  # imports tuf only when updates are on
            from edged.update.service import UpdateService

            self.updater = UpdateService(cfg.update, self.models.root, DaemonUpdateHost(self), clock=self.clock)
            self.updater.start()
        if self.power.enabled:
            self.add_timer("power", self.power.config.interval_s, lambda now: self.apply_power(self.power.sample(now)))
        interval = self.notifier.watchdog_interval()
        if interval:
            self.watchdog_gate = WatchdogGate(self.clock, interval, self.longest_invoke, cfg.server.stuck_invoke_s,
                                              last_tick=lambda: self.last_loop, max_loop_age_s=max(interval, 2 * cfg.server.tick_s),
                                              capacity_problem=lambda: self.workers.problem() if self.workers else "")
            self.add_timer("watchdog", interval, lambda now: self.watchdog_gate.maybe_ping(self.notifier, now))
        if cfg.server.metrics_endpoint:
            host, _, port = cfg.server.metrics_endpoint.rpartition(":")
            try:
                self.metrics_server = serve_metrics(host.strip("[]"), int(port),
                                                    lambda: prometheus_text(self.stats_snapshot()))
            except OSError as exc:
                raise EdgedError(f"cannot serve metrics on {cfg.server.metrics_endpoint}: {exc.strerror or exc}",
                                 code=ErrorCode.CONFIG_INVALID) from None
        self.busy_since = {i: None for i in range(cfg.server.workers)}
        self.workers = WorkerPool(self._worker, cfg.server.workers, self.clock)
        self.workers.start()
        self.add_timer("workers", cfg.server.tick_s, self.workers.check)
        self.state = DaemonState.RUNNING
        self.notifier.ready(self.status_line())
        log.info("ready in %.0f ms: predict %s, control %s, models %s, profile %s",
                 (time.monotonic() - t0) * 1000, cfg.endpoint, cfg.control_endpoint,
                 ", ".join(f"{m['model']}/{m['version']}" for m in self.models.describe()) or "none", self.profile)

    def _claim(self) -> None:
        """Check every socket directory, then lock it and the repository (edged.server.instance).

        Raises :class:`EdgedError`: ``CONFIG_INVALID`` for a socket directory another
        user owns or can write (they could replace the sockets and forge replies),
        ``INVALID_STATE`` when another edged holds a lock.  Either way nothing was
        changed but the creation of missing directories and lock files.
        """
        cfg = self.config
        endpoints = [("predict", cfg.endpoint), ("control", cfg.control_endpoint), ("events", cfg.events_endpoint),
                     ("frigate", cfg.frigate.endpoint)]
        dirs: list[Path] = []
        for name, endpoint in endpoints:
            if not endpoint or not endpoint.startswith("ipc://"):
                continue
            directory = Path(endpoint[len("ipc://"):]).parent
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o755)
            except OSError as exc:
                raise EdgedError(f"cannot create the directory of {name} endpoint {endpoint}: {exc}",
                                 code=ErrorCode.CONFIG_INVALID) from None
            reason = protocol.unsafe_ipc_directory(endpoint, os.geteuid())
            if reason:
                raise EdgedError(f"refusing {name} endpoint {endpoint}: {reason}; use a directory only this user "
                                 f"can write", code=ErrorCode.CONFIG_INVALID)
            if directory not in dirs:
                dirs.append(directory)
        for directory in dirs:
            self.instance.acquire(directory / RUNTIME_LOCK, f"runtime directory {directory}")
        state_dir = self.config.models_path / STATE_DIR
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgedError(f"cannot create {state_dir}: {exc.strerror}", code=ErrorCode.CONFIG_INVALID) from None
        self.instance.acquire(state_dir / REPOSITORY_LOCK, f"repository {self.config.models_path}")

    def _bind(self, name: str, endpoint: str, mode: int, kind: int = zmq.ROUTER) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        try:
            return self._bind_socket(sock, name, endpoint, mode, kind)
        except BaseException:
            sock.close(0)  # an open socket would make ctx.term() wait forever
            raise

    def _bind_socket(self, sock: zmq.Socket, name: str, endpoint: str, mode: int, kind: int) -> zmq.Socket:
        sock.setsockopt(zmq.LINGER, 1000)
        # Hard ceiling per frame: past it ZeroMQ drops the peer.  Messages between
        # max_message_bytes and this get a TOO_LARGE reply instead.
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.config.server.max_message_bytes)
        if self.config.curve is not None and is_tcp(endpoint) and name in _CURVE_SOCKETS:
            self.config.curve.apply(sock)  # ipc:// stays NULL: its file mode guards it
            sock.zap_domain = zap_domain(name)
        path = None
        if endpoint.startswith("ipc://"):
            path = Path(endpoint[len("ipc://"):])
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            except OSError as exc:
                raise EdgedError(f"cannot create the directory of {name} endpoint {endpoint}: {exc}",
                                 code=ErrorCode.CONFIG_INVALID) from None
            if path.exists():
                if kind == zmq.ROUTER and _ipc_alive(self.ctx, endpoint):
                    raise EdgedError(f"another edged is already serving on {endpoint}", code=ErrorCode.INVALID_STATE)
                path.unlink()  # stale socket of a daemon that died
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise EdgedError(f"cannot bind {name} endpoint {endpoint}: {exc}", code=ErrorCode.CONFIG_INVALID) from None
        if path is not None:
            self._ipc_files.append(path)
            os.chmod(path, mode)
            group = {"predict": self.config.server.socket_group, "frigate": self.config.frigate.socket_group}.get(name)
            if group:
                import grp

                try:
                    os.chown(path, -1, grp.getgrnam(group).gr_gid)
                except (KeyError, PermissionError) as exc:
                    log.warning("cannot give %s to group %s: %s", path, group, exc)
        return sock

    def add_timer(self, name: str, interval: float, fn: Callable[[float], None]) -> None:
        """Run ``fn(now)`` every ``interval`` seconds from the main loop."""
        self._timers.append(_Timer(name, interval, fn, self.clock.monotonic() + interval))

    def install_signal_handlers(self) -> dict[int, Any]:
        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            old[sig] = signal.signal(sig, self._on_signal)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        return old

    def restore_signal_handlers(self, old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._old_wakeup)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only enqueue: the main loop acts (a handler must not touch sockets or locks).
        self._pending.append("reload" if signum == signal.SIGHUP else f"quit:{signal.Signals(signum).name}")

    def request_stop(self, reason: str) -> None:
        if self.state is DaemonState.DRAINING:
            return
        self._stop_reason = reason
        self.state = DaemonState.DRAINING
        self._drain_deadline = self.clock.monotonic() + self.config.server.grace_period_s
        self.notifier.stopping(f"draining: {reason}")
        # A grace period longer than the unit's TimeoutStopSec must not end in SIGKILL.
        self.notifier.extend_timeout(self.config.server.grace_period_s + _STOP_MARGIN_S)
        log.info("stopping (%s): draining %d queued/in-flight requests, grace %.1fs", reason,
                 self.scheduler.depth() + self.scheduler.active, self.config.server.grace_period_s)

    def main_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.predict_sock, zmq.POLLIN)
        poller.register(self.control_sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        socks = [("control", self.control_sock), ("predict", self.predict_sock)]
        if self.frigate is not None:
            poller.register(self.frigate.sock, zmq.POLLIN)
            socks.append(("frigate", self.frigate.sock))
        tick = self.config.server.tick_s
        # A drain ends only after a poll that found nothing to read: a request already
        # on its way when the stop began is answered, not dropped with the socket.
        quiet = False
        while True:
            now = self.clock.monotonic()
            self.last_loop = now
            timeout = tick
            for t in self._timers:
                timeout = min(timeout, max(0.0, t.due - now))
            if self.frigate is not None:
                timeout = min(timeout, self.frigate.expire(now))
            draining = self.state is DaemonState.DRAINING  # no new swaps while stopping
            if self.watcher is not None and not draining:
                due = self.watcher.due(now)
                if due == 0.0:
                    self.models.scan()
                elif due is not None:
                    timeout = min(timeout, due)
            if self.models.rescan_at is not None and not draining:
                if now >= self.models.rescan_at:
                    self.models.scan()
                if self.models.rescan_at is not None:
                    timeout = min(timeout, max(0.0, self.models.rescan_at - now))
            if self.state is DaemonState.DRAINING:
                if self.scheduler.idle() and quiet:
                    break
                if self._drain_deadline is not None and now >= self._drain_deadline:
                    log.warning("grace period over with %d requests unfinished", self.scheduler.depth() + self.scheduler.active)
                    break
                timeout = min(timeout, 0.05)
            try:
                events = dict(poller.poll(timeout * 1000))
            except zmq.ZMQError as exc:  # EINTR surfaces on some pyzmq builds
                if exc.errno != zmq.EINTR:
                    raise
                events = {}
            quiet = not any(sock in events for _, sock in socks)
            if self._wake_r.fileno() in events:
                try:
                    while self._wake_r.recv(512):
                        pass
                except BlockingIOError:
                    pass
            while self._pending:
                cmd = self._pending.popleft()
                if cmd == "reload":
                    try:
                        self.reload()
                    except EdgedError:
                        pass  # refused and logged by reload(); the running config stays
                    except Exception:  # noqa: BLE001 - a bug in reload must not end the daemon
                        log.exception("reload failed; the running config stays")
                else:
                    self.request_stop(cmd.split(":", 1)[1])
                    quiet = False  # poll once more in the drain before ending it
            self._flush_outbox()
            self._send_events()
            for endpoint, sock in socks:
                if sock in events:
                    self._read(endpoint, sock)
            now = self.clock.monotonic()
            for t in self._timers:
                if now >= t.due:
                    t.due = now + t.interval
                    try:
                        t.fn(now)
                    except Exception:
                        log.exception("periodic job %s failed", t.name)

    def shutdown(self) -> None:
        """The end of a run: answer what never started, stop threads, flush replies, release everything."""
        self.close(graceful=True)

    def close(self, *, graceful: bool) -> None:
        """Release every resource :meth:`startup` acquired, whatever it got to; the one exit path.

        ``graceful`` (after the main loop): requests still queued are answered
        ``SHUTTING_DOWN``, replies and events are flushed and sockets linger
        briefly.  Otherwise (startup failed) nothing is sent and sockets are
        dropped at once.  Every step is bounded and best effort: one failing must
        not leave the rest (socket files, threads, locks) behind, nor hide why
        startup failed.
        """
        steps: list[tuple[str, Callable[[], Any]]] = []
        if self.updater is not None:  # a transfer stops at its next chunk; its .part file stays
            steps.append(("updater", lambda: self.updater.close(_JOIN_S)))
        if self.watcher is not None:
            steps.append(("watcher", self.watcher.stop))
        if self.metrics_server is not None:
            steps.append(("metrics server", self.metrics_server.close))
        if graceful:
            steps.append(("queued requests", self._answer_queued))
        if self.workers is not None:
            steps.append(("workers", self.workers.close))
        steps.append(("scheduler", self.scheduler.close))
        if self.models is not None:
            steps.append(("models", lambda: self._close_models(graceful)))
        if graceful and self.ctx is not None:
            steps.append(("replies", self._flush_outbox))
            steps.append(("events", self._send_events))
        if self.auth is not None:  # it holds a ZAP socket: ctx.term() would wait for it
            steps.append(("authenticator", self.auth.stop))
        steps.append(("sockets", lambda: self._close_sockets(graceful)))
        for path in self._ipc_files:
            steps.append((str(path), lambda path=path: path.unlink(missing_ok=True)))
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                steps.append(("wake-up socket", sock.close))
        steps.append(("locks", self.instance.close))  # last: a successor may start once our socket files are gone
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the remaining steps must still run
                if graceful:
                    log.exception("shutdown: %s failed", what)
                else:
                    log.debug("cleanup after failed startup: %s: %s", what, exc)
        self.state = DaemonState.STOPPED
        if graceful:
            log.info("stopped")

    def _close_models(self, graceful: bool) -> None:
        """Stop the swap thread and the workers, and tell the boot counter whether the end was clean."""
        assert self.models is not None
        swapper_done = self.models.close(timeout=_JOIN_S)
        if self.workers is not None:
            # Workers not stuck in invoke() exit at once; a stuck one is abandoned
            # (daemon thread) so the stop stays within TimeoutStopSec.
            self.workers.join(_JOIN_S, time.monotonic)
        if not graceful:
            self.models.record_clean_stop()  # startup failed in order (a port in use...): no model crashed it
        elif swapper_done and (self.workers is None or self.workers.alive() == 0):
            self.models.record_clean_stop()  # the boot counter counts only unclean ends
        else:
            log.warning("not a clean stop for the boot counter: a worker or the swap thread did not finish")

    def _answer_queued(self) -> None:
        # Past the grace period: what never started is answered, not dropped.
        for job in self.scheduler.drain():
            if not _answer_is_mine(job):
                continue  # a Frigate frame already answered at its budget
            self.stats.shed(job.model.name, job.model.version)
            self.post(job.req, error_reply(job.req.id, job.req.op,
                                           RetryableError("daemon stopped before this request could run")))

    def _close_sockets(self, graceful: bool) -> None:
        if self.ctx is None:
            return
        if not graceful:
            self.ctx.destroy(linger=0)  # closes every socket, never waits
            return
        for sock in (self.predict_sock, self.control_sock, self.events_sock, self.frigate and self.frigate.sock):
            if sock is not None:
                sock.close(linger=500)
        self.ctx.term()

    def run(self) -> None:
        """startup → main_loop → shutdown, with signal handlers installed."""
        try:
            self.startup()
        except BaseException:
            self.close(graceful=False)
            raise
        old = self.install_signal_handlers()
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, _GIL_SWITCH_S))
        try:
            self.main_loop()
        finally:
            self.shutdown()
            self.restore_signal_handlers(old)
            sys.setswitchinterval(switch)

    # -- sockets ---------------------------------------------------------------------------

    def _read(self, endpoint: str, sock: zmq.Socket) -> None:
        # Read everything that is waiting, but give other sockets a turn after a batch.
        # Checking ZMQ_EVENTS is ~4x cheaper than ending each batch on a zmq.Again; the
        # first message needs no check, as the poll that called us just saw it.
        for n in range(256):
            if n and not _waiting(sock):
                return
            try:
                frames = _recv_message(sock)
            except zmq.Again:
                return
            try:
                self._handle(endpoint, frames)
            except Exception:  # noqa: BLE001 - one message must never end the main loop
                # _handle answers every error it expects; reaching here is a bug.  Answer
                # INTERNAL without echoing anything from the message (it may be the cause).
                log.exception("%s message of %d frame(s) failed", endpoint, len(frames))
                split = 2 if len(frames) > 2 and len(frames[1]) == 0 else 1
                if len(frames) > split:
                    self._send(endpoint, frames[:split], protocol.dumps(error_reply(
                        None, None, InternalError("internal error; see the daemon log"))), [])

    def _handle(self, endpoint: str, frames: list[zmq.Frame]) -> None:
        # ROUTER prepends the peer identity.  A REQ peer adds an empty delimiter;
        # a DEALER peer (our client) does not.  Echo whichever we got.
        split = 2 if len(frames) > 2 and len(frames[1]) == 0 else 1
        envelope, body = frames[:split], frames[split:]
        received = self.clock.monotonic()
        if not body:
            return  # an empty message has nobody to answer by id; ignore it
        if endpoint == "frigate" and self.frigate is not None:
            self.frigate.handle(envelope, body, received)
            return
        try:
            protocol.check_message_size(body, self.config.server.max_message_bytes)
            header = protocol.parse_header(body[0].buffer, self.config.server.max_header_bytes)
        except EdgedError as exc:
            self._send(endpoint, envelope, protocol.dumps(error_reply(None, None, exc)), [])
            return
        dispatch(self, Request(endpoint, envelope, header, body[1:], received))

    def reply(self, req: Request, header: dict[str, Any], arrays: list[Any] | None = None) -> None:
        """Send a reply from the main thread."""
        header.setdefault("v", protocol.PROTOCOL_VERSION)
        header.setdefault("id", req.id)
        header.setdefault("op", req.op)
        header.setdefault("ok", True)
        if req.endpoint == "frigate":
            self._send("frigate", req.envelope, *self._frigate_frames(req, header, arrays or []))
            return
        self._send(req.endpoint, req.envelope, encode_reply(header), arrays or [])

    def _frigate_frames(self, req: Request, header: dict[str, Any], arrays: Any) -> tuple[Any, list[Any]]:
        assert self.frigate is not None
        first, *rest = self.frigate.encode(req, header, list(arrays))
        return first, rest

    def _send(self, endpoint: str, envelope: list[Any], header: bytes, frames: list[Any]) -> None:
        try:
            _send_message(self._reply_socks[endpoint], [*envelope, header, *frames])
        except zmq.ZMQError as exc:  # peer gone (EHOSTUNREACH with ROUTER_MANDATORY) or shutting down
            log.debug("reply dropped: %s", exc)
        except Exception:  # noqa: BLE001 - one reply must never end the main loop
            log.exception("reply on %s dropped", endpoint)

    def _flush_outbox(self) -> None:
        # Replies computed by workers and the swap thread; only this (main) thread
        # touches the sockets.  deque.append/popleft are atomic, so no lock.
        while self._outbox:
            endpoint, envelope, header, frames = self._outbox.popleft()
            self._send(endpoint, envelope, header, frames)

    def post(self, req: Request, header: dict[str, Any], arrays: list[Any] = ()) -> None:
        """Reply from a worker or background thread: queue it and wake the main loop."""
        header.setdefault("v", protocol.PROTOCOL_VERSION)
        header.setdefault("id", req.id)
        header.setdefault("op", req.op)
        header.setdefault("ok", True)
        if req.endpoint == "frigate":  # post-processed here, on the worker that computed it
            self._outbox.append(("frigate", req.envelope, *self._frigate_frames(req, header, arrays)))
        else:
            self._outbox.append((req.endpoint, req.envelope, encode_reply(header), list(arrays)))
        self.wake()

    def wake(self) -> None:
        """Make the main loop turn now (from any thread or a signal handler)."""
        w = self._wake_w
        if w is None:
            return  # not started yet: the loop that would wake does not exist
        try:
            w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already pending, or shutting down

    def publish(self, event: dict[str, Any]) -> None:
        """Queue an event for subscribers of the events socket (any thread)."""
        event.setdefault("ts", round(self.clock.time(), 3))
        kind = event.get("event")
        if kind == "swap":
            self.stats.swapped(event["model"], event["version"])
        elif kind == "rollback" and event.get("from"):
            self.stats.rolled_back(event["model"], event["from"])
        if self.updater is not None:
            self.updater.observe(event)  # a version rejected or rolled back here is never fetched again
        self._events.append(event)
        self.wake()

    def _send_events(self) -> None:
        if self._events and self.state is not DaemonState.STOPPED:
            self.notifier.status(self.status_line())
        while self._events:
            event = self._events.popleft()
            if self.events_sock is not None:
                topic = _event_topic(event.get("event")).encode()
                try:
                    self.events_sock.send_multipart([topic, protocol.dumps(event)])
                except (TypeError, ValueError, zmq.ZMQError):
                    log.exception("event %r dropped", event.get("event"))

    def apply_power(self, change: ProfileChange | None) -> None:
        """Apply a profile the power controller decided on: workers, repository, replies, event."""
        if change is None:
            return
        self.scheduler.set_max_active(change.concurrency_bound)
        self.profile = change.name
        models = self.models
        if models is not None:
            models.num_threads = change.profile.num_threads
            models.updates_allowed = change.profile.allow_updates
            models.set_variant(change.profile.variant)
            if change.profile.allow_updates:
                models.scan()  # apply versions deferred under a stricter profile
        self.publish(change.event())

    def power_override(self, profile: str | None, for_s: float | None, auto: bool) -> dict[str, Any]:
        """``ctl power``: override the profile (or return to the policy) and say where power stands."""
        self.apply_power(self.power.override(profile, for_s, auto))
        return self.power.status()

    def run_repository_op(self, req: Request, kind: str, **kw: Any) -> None:
        """Queue a swap/rollback/pin on the swap thread; the reply is posted when it finishes."""

        def done(result: dict[str, Any] | None, error: BaseException | None) -> None:
            if error is not None:
                self.post(req, error_reply(req.id, req.op, error))
            else:
                self.post(req, dict(result or {"changed": False}))

        model = req.header.get("model")
        if kind == "pin":
            earlier = self.models.state.get(self.models.slot(model).name).pinned
            slot = self.models.pin(model, kw["version"])
            serving = slot.serving.version if slot.serving else None

            def pinned(result: dict[str, Any] | None, error: BaseException | None) -> None:
                if error is not None:  # the earlier pin (or none) holds again
                    self.models.restore_pin(slot.name, earlier)
                done({"model": slot.name, "pinned": kw["version"], **(result or {})}, error)

            if serving == kw["version"]:
                self.reply(req, {"model": slot.name, "pinned": kw["version"], "version": serving})
                return
            self.models.request("swap", slot.name, kw["version"], reason="pin", done=pinned)
            return
        self.models.request(kind, model, kw.get("version"), force=kw.get("force", False),
                            reason=kw.get("reason", "manual"), done=done)

    # -- predict -----------------------------------------------------------------------------

    def submit_predict(self, req: Request) -> Job:
        h = req.header
        model = self.models.get(h.get("model"))
        priority = h.get("priority", "normal")
        wait = bool(h.get("wait", False))
        client = req.envelope[0].bytes  # the ROUTER identity: fairness is per connection
        # The queue is judged twice, on purpose.  The governor's check comes before its rate
        # limit, so a full queue is a power shed (counted so, answered with the profile and a
        # duty-cycle retry) that spends no token and refuses `wait` requests too.  Only the
        # scheduler knows who holds what, so it alone pushes out the biggest holder's newest
        # job, at the same allowance.  depth_for() gives the governor the depth left after
        # such a push-out, so the scheduler never refuses for a full queue what was admitted.
        refused = self.power.admit(priority, wait, self.scheduler.depth_for(client))
        if refused is not None and refused is not DEFERRED:
            if refused.counter == "shed":
                self.stats.shed(model.name, model.version)
            else:
                self.stats.throttled(model.name, model.version)
            raise self.power.refusal(refused)
        deadline = req.received + h["deadline_ms"] / 1000.0 if h.get("deadline_ms") is not None else None
        req.extra["model"] = model
        job = Job(req, model, deadline, int(h.get("top_k", 0)), priority, owes_token=refused is DEFERRED)
        if self._take_inline(job):
            self._run_inline(job)
            return job
        try:
            evicted = self.scheduler.submit(job, priority, client=client,
                                            capacity=self.power.governor.queue_allowance(priority))
        except Throttled:
            self.stats.shed(model.name, model.version)
            raise
        # The queue was full: the connection holding the most gave up its newest job.
        if evicted is not None and _answer_is_mine(evicted):
            self.stats.shed(evicted.model.name, evicted.model.version)
            self.reply(evicted.req, error_reply(evicted.req.id, evicted.req.op, Throttled(
                "pushed out of a full queue by another client's request (this connection held the most queued)",
                retry_after_ms=self.power.governor.queue_full_retry_ms())))
        return job

    def _worker(self, worker_id: int) -> None:
        """One worker thread's loop (run and restarted by :class:`WorkerPool`); returns once the scheduler closes."""
        self.busy_since[worker_id] = None
        while True:
            job = self.scheduler.get(worker_id)
            if job is None:
                return
            if not _answer_is_mine(job):
                self.scheduler.done()  # already answered by the main loop (past its budget)
                continue
            header, arrays = self._run_job(worker_id, job)
            self.post(job.req, header, arrays)

    def _run_job(self, worker_id: int, job: Job, defer: list[Callable[[], None]] | None = None,
                 inline: bool = False) -> tuple[dict[str, Any], list[Any]]:
        """Run one taken job as ``worker_id``: its reply (a result or an error), and ``scheduler.done()``.

        With ``defer`` the bookkeeping is appended to it, to run once the reply is sent.
        ``inline``: the main loop runs it (:meth:`_run_inline`), see :meth:`_process`.
        """
        began = self.clock.monotonic()
        service_s: float | None = None
        try:
            header, arrays = self._process(worker_id, job, began, defer, inline)
            service_s = self.clock.monotonic() - began
        except Exception as exc:
            header, arrays = error_reply(job.req.id, job.req.op, exc), []
            # Say which version refused or failed it, as a success reply would.
            header.update(model=job.model.name, version=job.model.version, delegate=job.model.delegate,
                          profile=self.profile)
            code = header["error"]["code"]
            if code == ErrorCode.DEADLINE_EXCEEDED.value:
                self.stats.shed(job.model.name, job.model.version)
            else:
                self.stats.observe(job.model.name, job.model.version, error=code)
            if not isinstance(exc, (RequestError, RetryableError)):
                self.models.record(job.model, False, None, None)  # the model failed, not the request
        finally:
            self.busy_since[worker_id] = None
            self.scheduler.done(service_s)
        return header, arrays

    def _take_inline(self, job: Job) -> bool:
        """Whether the main loop runs ``job`` itself, with no hand-off to a worker; if so, it is
        counted as taken (:meth:`Scheduler.take_if_idle`) and :meth:`_run_inline` must run it.

        The two thread hand-offs (main loop → worker → main loop) cost a lone
        request about as much as the rest of the daemon's work on it.  So a request
        that would run solo anyway runs right here: nothing else taken or queued (asked
        early, so that a loaded daemon stops there, and again as the last condition, which
        takes the job in the same look under the lock) nor waiting on the
        socket (requests that pile up go to the workers and run side by side), a
        solo interpreter the power profile allows, a quick model (its last ``invoke()`` within
        ``server.inline_max_ms``, so control requests and timers wait about that long
        at most: the last invoke() is a guide, not a bound), tensors only (an image's
        decoding time is the client's to choose, up to ``max_image_pixels``), and no
        power pacing that could make the main loop sleep.

        Only a request from the predict socket: a Frigate frame is answered by whoever
        claims it first, its worker or the main loop's budget expiry, so it always goes
        to a worker.  This is the one list of conditions; callers just submit.
        """
        limit_us = self.config.server.inline_max_ms * 1000
        recent = job.model.recent_invoke_us
        return (limit_us > 0 and job.req.endpoint == "predict" and not job.owes_token and bool(recent)
                and recent[-1] <= limit_us
                and not any(meta.get("encoding") == "image" for meta in job.req.header["inputs"])
                and self._solo_fits(job.model) and self.scheduler.idle()
                and not _waiting(self.predict_sock)
                and self.power.governor.wait_before_invoke(0) == 0.0
                and self.scheduler.take_if_idle())

    def _run_inline(self, job: Job) -> None:
        """Run ``job`` (taken by :meth:`_take_inline`) on this (main) thread as worker 0, which
        is idle; reply before the bookkeeping."""
        self.inline_runs += 1
        after: list[Callable[[], None]] = []
        header, arrays = self._run_job(0, job, after, inline=True)
        self.reply(job.req, header, arrays)
        for fn in after:
            try:
                fn()
            except Exception:  # noqa: BLE001 - the reply is sent; a second one must not follow
                log.exception("bookkeeping after request %r failed", job.req.id)

    def _process(self, worker_id: int, job: Job, start: float, defer: list[Callable[[], None]] | None = None,
                 inline: bool = False) -> tuple[dict[str, Any], list[Any]]:
        """Run ``job``, taken at ``start``: its reply header and outputs.

        The bookkeeping (health, probation, statistics) runs before returning, or is
        appended to ``defer`` for the caller to run once the reply is sent.  An
        ``inline`` job (:meth:`_take_inline`) skips the worker's pacing and solo checks:
        the inline decision has just made them (no token owed, no duty-cycle pause due,
        the solo interpreter fits, nothing else taken or queued)."""
        req, model = job.req, job.model
        if job.deadline is not None and start >= job.deadline:  # deadline_ms=0: due on receipt
            raise DeadlineExceeded(f"deadline passed {1000 * (start - job.deadline):.0f} ms before it could start")
        names, arrays = [], []
        for i, (meta, frame) in enumerate(zip(req.header["inputs"], req.frames)):
            names.append(meta.get("name"))
            if meta.get("encoding") == "image":
                idx = model._by_name.get(meta.get("name"), i) if meta.get("name") else i
                if len(frame) > self.config.server.max_image_bytes:
                    raise RequestError(f"image is {len(frame)} bytes, limit {self.config.server.max_image_bytes}",
                                       code=ErrorCode.TOO_LARGE)
                if idx >= len(model.inputs):
                    raise RequestError(f"{model.name} has only {len(model.inputs)} input(s)")
                arrays.append(model.image_input(frame.buffer, idx, max_pixels=self.config.server.max_image_pixels,
                                                formats=self.config.server.image_formats))
            else:
                arrays.append(protocol.array_from_frame(meta, frame.buffer, i))
        ordered = model.arrange(names, arrays)
        if inline:
            alone = True
        else:  # a worker: wait out the rate limit and duty cycle, then ask for every core
            self.power.pace(worker_id, job.priority, job.deadline, job.owes_token)
            alone = self._may_run_solo(model)
        started = self.busy_since[worker_id] = self.clock.monotonic()
        result = model.run(ordered, alone=alone)
        self.busy_since[worker_id] = None
        self.power.record(worker_id, started, result.invoke_us / 1e6)
        # A daemon-unique id an application quotes in a later ``feedback`` (clients' own
        # ids may collide across clients); itertools.count's next() is atomic under the GIL.
        request_id = f"{self._request_prefix}-{next(self._request_seq)}"
        outputs = [protocol.as_wire_array(o) for o in result.outputs]
        header: dict[str, Any] = {
            "request_id": request_id,
            "model": model.name, "version": model.version, "variant": model.spec.variant,
            "delegate": model.delegate, "runtime": self.backend.describe(), "profile": self.profile,
            "threads": result.threads,
            "outputs": [protocol.tensor_meta(o, spec.name) for o, spec in zip(outputs, model.outputs)],
        }
        if job.top_k:
            header["top_k"] = model.top_k(result.outputs, job.top_k)
        done = self.clock.monotonic()
        header["timing"] = {"queue_us": int((start - req.received) * 1e6), "invoke_us": result.invoke_us,
                            "total_us": int((done - req.received) * 1e6)}

        def book() -> None:  # health, probation and statistics
            self.models.record(model, True, result.outputs, result.invoke_us, inputs=ordered, request_id=request_id)
            self.stats.observe(model.name, model.version, latency_us=header["timing"]["total_us"],
                               cpu_s=result.cpu_s)

        if defer is None:
            book()
        else:
            defer.append(book)
        return header, outputs

    def _may_run_solo(self, model: Any) -> bool:
        """Whether this request may take the solo interpreter (every core) of ``model``.

        Only when nothing else runs or waits: asked right before invoke(), so a request
        that arrived meanwhile sends this one to the pool.
        """
        return self._solo_fits(model) and self.scheduler.alone()

    def _solo_fits(self, model: Any) -> bool:
        """Whether ``model`` has a solo interpreter the power profile allows.

        A profile's ``num_threads`` below the solo thread count forbids it at once,
        before the next load rebuilds the interpreters within the cap.
        """
        cap = self.models.num_threads
        return model.solo_threads > 0 and (cap is None or cap >= model.solo_threads)

    # -- queries -----------------------------------------------------------------------------

    def stats_snapshot(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap["health"] = self.models.health.snapshot_all()
        return snap

    def parallelism(self) -> dict[str, Any]:
        """The chosen parallelism, how it was chosen, and the machine it was derived from."""
        cfg, chosen = self.config, self.config.parallelism
        return {"workers": cfg.server.workers, "num_threads": cfg.runtime.num_threads,
                "solo_threads": cfg.runtime.solo_threads if cfg.runtime.solo_threads > cfg.runtime.num_threads > 0 else 0,
                "inline_max_ms": cfg.server.inline_max_ms, "inline_runs": self.inline_runs,
                "cores": chosen.get("cores"), "memory_mb": chosen.get("memory_mb"), "chosen": chosen.get("chosen", {})}

    def longest_invoke(self) -> float:
        now = self.clock.monotonic()
        return max((now - since for since in list(self.busy_since.values()) if since is not None), default=0.0)

    def status_line(self) -> str:
        """One line for systemd's STATUS=: models, versions, profile."""
        models = ", ".join(f"{m['model']}/{m.get('version') or '-'}" + ("(probation)" if m.get("probation") else "")
                           for m in self.models.describe()) or "no models"
        return f"{self.state.value}: {models}; profile {self.profile}"

    def stuck_workers(self, now: float | None = None) -> list[int]:
        now = self.clock.monotonic() if now is None else now
        limit = self.config.server.stuck_invoke_s
        return [w for w, since in list(self.busy_since.items()) if since is not None and now - since > limit]

    def health(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        problems = []
        stuck = self.stuck_workers(now)
        serving = sum(1 for s in self.models.slots.values() if s.serving is not None)
        if stuck:
            problems.append(f"workers {stuck} stuck in invoke() for over {self.config.server.stuck_invoke_s}s")
        total, alive = self.workers.count, self.workers.alive()
        if alive < total:
            problems.append(self.workers.problem() or f"{total - alive} of {total} workers not running (restarting)")
        if serving == 0:
            problems.append("no model is serving")
        broken = [s.name for s in self.models.slots.values() if s.serving is None]
        if broken:
            problems.append(f"models without a loadable version: {', '.join(broken)}")
        status = "unhealthy" if stuck or serving == 0 or alive == 0 else ("degraded" if broken or alive < total else "ok")
        return {"status": status, "state": self.state.value, "models_serving": serving, "stuck_workers": stuck,
                "workers": {"configured": total, "alive": alive, "lost": self.workers.lost()},
                "loop_age_s": round(now - self.last_loop, 3), "problems": problems}

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state.value, "pid": os.getpid(), "edged": edged.__version__,
            "uptime_s": round(self.clock.monotonic() - self.started_at, 3),
            "runtime": self.backend.describe(), "delegate_config": self.config.runtime.delegate,
            "endpoints": {"predict": self.config.endpoint, "control": self.config.control_endpoint,
                          **({"frigate": self.config.frigate.endpoint} if self.config.frigate.endpoint else {})},
            "config": self.config.source, "repository": str(self.models.root), "profile": self.profile,
            "models": self.models.describe(), "queue_depth": self.scheduler.depth(), "queue_size": self.scheduler.queue_size,
            "workers": {"total": self.workers.count, "alive": self.workers.alive(), "busy": self.scheduler.active,
                        "restarts": self.workers.restarts},
            "parallelism": self.parallelism(),
            "health": self.health()["status"],
            "power": {"profile": self.profile, "reason": self.power.decision.reason if self.power.decision else None},
        }

    def reload(self) -> dict[str, Any]:
        """Re-read the config; an invalid one is refused and the old one kept.

        Raises :class:`ConfigError` (answered as ``CONFIG_INVALID``) when the new
        config does not validate.
        """
        previous = self.state
        self.state = DaemonState.RELOADING
        self.notifier.reloading("reloading config")
        try:
            try:
                new = config_mod.load(self.config_path, self.overrides)
            except ConfigError as exc:
                log.error("reload refused, keeping the running config: %s", exc)
                raise
            changed = [f.name for f in dataclasses.fields(new.server)
                       if getattr(new.server, f.name) != getattr(self.config.server, f.name)]
            restart_needed = [f"server.{k}" for k in changed if k not in _LIVE_SERVER_KEYS]
            if new.runtime != self.config.runtime:
                restart_needed.append("runtime")
            if new.update != self.config.update:
                restart_needed.append("update")
            if new.models_path != self.config.models_path:
                restart_needed.append("repository.path")
                new.repository.path = self.config.repository.path
            restart_needed += self._reload_security(new)
            restart_needed += [f"frigate.{k}" for k in _FRIGATE_SOCKET_KEYS
                               if getattr(new.frigate, k) != getattr(self.config.frigate, k)]
            if restart_needed:
                log.warning("reload: %s change only on restart", ", ".join(restart_needed))
            for key in _LIVE_SERVER_KEYS:  # before power: the governor reads queue_size
                setattr(self.config.server, key, getattr(new.server, key))
            if self.auth is not None and new.curve is not None:
                self.auth.replace(new.allowed_keys, new.control_keys)
                for key in ("client_keys_dir", "control_keys_dir"):
                    setattr(self.config.security, key, getattr(new.security, key))
                self.config.allowed_keys, self.config.control_keys = new.allowed_keys, new.control_keys
            logging.getLogger("edged").setLevel(new.server.log_level.upper())
            self.scheduler.queue_size = new.server.queue_size
            self.scheduler.max_per_client = new.max_queued_per_client
            self.config.repository = new.repository
            self.config.power = new.power
            for key in _FRIGATE_LIVE_KEYS:  # the endpoint reads self.config.frigate at each frame
                setattr(self.config.frigate, key, getattr(new.frigate, key))
            self.apply_power(self.power.configure(new.power, queue_size=new.server.queue_size))
            for t in self._timers:
                if t.name == "power":
                    t.interval = self.power.config.interval_s
            if self.watchdog_gate is not None:
                self.watchdog_gate.stuck_invoke_s = new.server.stuck_invoke_s
            self.models.scan()
            log.info("reloaded config from %s; repository rescanned", new.source)
            return {"reloaded": True, "restart_needed": restart_needed}
        finally:
            self.state = previous if previous is not DaemonState.RELOADING else DaemonState.RUNNING
            self.notifier.ready(self.status_line())

    def _reload_security(self, new: Config) -> list[str]:
        """[security] keys a reload cannot apply: the server key and the TCP control opt-in are bind-time."""
        old = self.config.security
        needed = [f"security.{k}" for k in ("server_secret_key", "allow_insecure_tcp_control")
                  if getattr(new.security, k) != getattr(old, k)]
        if new.curve != self.config.curve and "security.server_secret_key" not in needed:
            needed.append("security.server_secret_key")  # same path, new key in the file
        return needed


def _event_topic(kind: Any) -> str:
    if kind == "profile":
        return "power"
    if isinstance(kind, str) and kind.startswith(("update-", "download-")):
        return "update"
    return "model"


def _answer_is_mine(job: Job) -> bool:
    """True if the caller is to answer ``job`` (always, except a Frigate frame already answered)."""
    claim = getattr(job, "claim", None)
    return claim is None or claim.acquire(blocking=False)


def _ipc_alive(ctx: zmq.Context, endpoint: str) -> bool:
    """True if a live daemon answers ``health`` on ``endpoint`` within 300 ms."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart([protocol.dumps({"v": 1, "id": "probe", "op": "health"})])
        return bool(sock.poll(300))
    finally:
        sock.close(0)
