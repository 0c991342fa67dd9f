"""The update service: one background thread that runs checks off the request path.

The thread sleeps until the strategy's next check or an on-demand one
(``edged ctl update check``), runs :meth:`UpdateClient.check`, and hands its
decisions to the daemon through :class:`UpdateHost` – a narrow interface: the
service never touches daemon or repository fields.  Downloads, hashing and
fsyncs all happen on this thread; the main loop only sees events and, after an
install, a rescan request.
"""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edged.config import UpdateConfig
from edged.seams import Clock
from edged.update.client import CheckResult, UpdateClient
from edged.update.conditions import Situation
from edged.update.decide import Decision, LocalModel
from edged.update.fetch import ResumableFetcher
from edged.update.strategy import Context, Health, Strategy, make_strategy

log = logging.getLogger("edged.update")

MACHINE_ID = Path("/etc/machine-id")


class UpdateHost(Protocol):
    """What the update service may ask of the daemon (implemented in edged.server.updatehost)."""

    def local_models(self) -> list[LocalModel]:
        """Every served model: serving/committed versions, versions on disk, failed ones."""

    def runtime_ok(self, min_runtime: Any) -> bool:
        """True when this device's runtime meets a version's ``min_runtime``."""

    def withdraw(self, model: str, version: str, target: str, reason: str) -> None:
        """Roll ``model`` back from the withdrawn ``version`` to ``target`` and mark it bad."""

    def mark_bad(self, model: str, version: str, reason: str) -> None:
        """Keep a version on disk from ever being activated."""

    def installed(self, model: str, version: str) -> None:
        """A complete version was renamed into the repository: rescan now."""

    def emit(self, event: dict[str, Any]) -> None:
        """Publish an event (any thread)."""

    def situation(self) -> Situation:
        """Power profile, battery, CPU, free disk, default-route interface, local time (conditions)."""

    def health(self) -> Health | None:
        """The serving versions' health since the last call (adaptive strategy)."""


def default_device_id(machine_id: Path = MACHINE_ID) -> str:
    """A hash of /etc/machine-id (never the id itself: it is meant to stay private); hostname as fallback."""
    try:
        seed = machine_id.read_text().strip()
    except OSError:
        seed = ""
    if not seed:
        log.warning("%s unreadable; the device id derives from the hostname (set [update] device_id)", machine_id)
        seed = "host:" + socket.gethostname()
    return hashlib.sha256(f"edged-update\0{seed}".encode()).hexdigest()[:32]


class UpdateService:
    def __init__(self, cfg: UpdateConfig, repo_root: Path, host: UpdateHost, *, clock: Clock | None = None,
                 strategy: Strategy | None = None, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.host = host
        self.clock = clock or Clock()
        self.strategy = strategy or make_strategy(
            cfg, Context(situation=host.situation, health=host.health, emit=host.emit, rng=rng or random.Random()))
        self.device_id = cfg.device_id or default_device_id()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[Callable[[dict[str, Any]], None]] = []
        self._manual = False
        self.fetcher = ResumableFetcher(timeout_s=cfg.timeout_s, retries=cfg.retries,
                                        max_rate_kbps=cfg.max_rate_kbps, stop=self._stop)
        self.client = UpdateClient(cfg, repo_root, device_id=self.device_id, fetcher=self.fetcher,
                                   emit=host.emit, clock=self.clock)
        self.last: CheckResult | None = None
        self.checking = False
        self.checks = 0
        self.next_at: float | None = None  # monotonic
        self.next_why = ""
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edged-updater", daemon=True)
        self._thread.start()
        log.info("updates from %s: channel %s, strategy %s, device %s", self.cfg.url, self.cfg.channel,
                 self.strategy.name, self.device_id)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; a transfer in progress stops at its next chunk and keeps its .part file."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.fetcher.close()

    def check_now(self, done: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Run a check as soon as the thread is free; ``done(result)`` is called from the thread."""
        with self._lock:
            self._manual = True
            if done is not None:
                self._waiters.append(done)
        self._wake.set()

    def observe(self, event: dict[str, Any]) -> None:
        """Learn from daemon events: a version rejected or rolled back here is never fetched again;
        a power profile change re-evaluates a pending update."""
        kind, model = event.get("event"), event.get("model")
        if kind == "profile":
            self.conditions_changed(f"power profile {event.get('profile')}")
            return
        if not isinstance(model, str):
            return
        if kind == "rejected" and isinstance(event.get("version"), str) and not event.get("variant"):
            self.client.record_failure(model, event["version"], f"validation: {event.get('reason', '')}")
        elif kind == "rollback" and isinstance(event.get("from"), str):
            self.client.record_failure(model, event["from"], f"rolled back: {event.get('reason', '')}")

    def conditions_changed(self, why: str) -> None:
        """The power profile changed: look again now at an update held back by it (any thread)."""
        if self.pending() and not self.checking:
            log.info("update conditions changed (%s): checking the pending update again", why)
            self._wake.set()

    def pending(self) -> list[dict[str, Any]]:
        """Decisions of the last check that wait for conditions."""
        last = self.last
        return [d for d in last.decisions if d["action"] == "pending"] if last is not None else []

    def status(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        return {
            "url": self.cfg.url, "channel": self.cfg.channel, "strategy": self.strategy.name,
            "device_id": self.device_id, "checks": self.checks, "checking": self.checking,
            "last_check": self.last.to_dict() if self.last else None,
            "download": dict(self.client.download) if self.client.download else None,
            "next_check": {"in_s": None if self.next_at is None else round(max(0.0, self.next_at - now), 1),
                           "why": self.next_why},
            "failed": {m: dict(v) for m, v in self.client.failed.items()},
            "pending": [{k: d.get(k) for k in ("model", "version", "bytes", "held_by")} for d in self.pending()],
            "interval_s": getattr(self.strategy, "interval", None if self.strategy.name == "off" else self.cfg.interval_s),
        }

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            delay, why = self.strategy.next_check(self.clock.monotonic(), self.last)
            held = self.pending()
            if held and (delay is None or delay > self.cfg.recheck_s):
                # Conditions like a maintenance window change with time alone: look again soon.
                delay = self.cfg.recheck_s
                why = f"an update is pending ({held[0].get('held_by', '')}); looking again in {delay:g} s"
            self.next_at = None if delay is None else self.clock.monotonic() + delay
            self.next_why = why
            woken = self._wake.wait(delay)
            if self._stop.is_set():
                break
            self._wake.clear()
            with self._lock:
                waiters, self._waiters = self._waiters, []
                manual, self._manual = self._manual, False
            reason = ("manual" if manual else "conditions") if woken else "schedule"
            self.next_at, self.next_why = None, "checking now"
            try:
                result = self._check(reason)
            except Exception:  # noqa: BLE001 - the thread must outlive any bug in one check
                log.exception("update check crashed")
                result = None
            for done in waiters:
                try:
                    done(result.to_dict() if result else {"ok": False, "refused": "internal error; see the log"})
                except Exception:  # noqa: BLE001
                    log.exception("update check callback failed")

    def _check(self, reason: str) -> CheckResult:
        self.checking = True
        try:
            result = self.client.check(self.host.local_models(), reason=reason,
                                       may_download=self.strategy.may_download, apply=self._apply,
                                       runtime_ok=self.host.runtime_ok, hold=self.strategy.hold)
        finally:
            self.checking = False
        self.last = result
        self.checks += 1
        log.info("update check (%s): %s; %d requests, %d bytes, %.2f s", reason,
                 "ok" if result.ok else f"refused: {result.refused}", result.requests, result.bytes,
                 result.duration_s)
        return result

    def _apply(self, decision: Decision) -> None:
        for version, why in decision.mark_bad.items():
            self.host.mark_bad(decision.model, version, why)
        if decision.action == "withdraw" and decision.version and decision.target:
            log.warning("%s: %s", decision.model, decision.reason)
            self.host.withdraw(decision.model, decision.version, decision.target, decision.reason)
        elif decision.action == "download" and decision.version:
            self.host.installed(decision.model, decision.version)
