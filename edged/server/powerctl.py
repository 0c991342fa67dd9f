"""Wires the power layer into the daemon: sample on the tick, decide, enforce.

Every ``power.interval_s`` the main loop reads the sensor source, lets the
:class:`~edged.power.policy.Policy` decide, and on a change applies the new
profile everywhere it matters:

* the :class:`~edged.power.governor.Governor` (rate, queue, priority, duty cycle);
* the scheduler's concurrency bound (workers in use);
* the repository: ``allow_updates`` defers auto-activation (pending versions are
  applied when a later profile allows), ``variant`` switches to
  ``model_lite.tflite`` through the swap thread, ``num_threads`` applies to
  interpreters built from then on (the next swap or variant switch);
* the profile named in every reply, the systemd STATUS line, and an event.

Sensor reads are quick file reads (sysfs, file) or psutil calls; they run on
the main loop, so a source is expected to answer in milliseconds.
"""

from __future__ import annotations

import logging
from typing import Any

from edged.errors import DeadlineExceeded, ErrorCode, RequestError, Throttled
from edged.power import Governor, Policy, PolicyError, PowerConfig, make_source
from edged.seams import Clock

log = logging.getLogger("edged.power")


class PowerController:
    def __init__(self, raw_config: dict[str, Any], clock: Clock, daemon: Any) -> None:
        self.clock = clock
        self.daemon = daemon
        self.configure(raw_config, first=True)

    def configure(self, raw_config: dict[str, Any], first: bool = False) -> None:
        """(Re)build source, policy and governor from a validated ``[power]`` table."""
        cfg = PowerConfig.from_dict(raw_config)
        self.config = cfg
        self.source = make_source(cfg.source, cfg.sysfs_root, cfg.file, self.clock, cfg.thermal_zones)
        override = None if first else self.policy.status()["override"]
        self.policy = Policy(cfg, self.clock)
        server = self.daemon.config.server
        start = cfg.profile(cfg.default_profile)
        self.governor = Governor(start, self.clock, workers=server.workers, queue_size=server.queue_size,
                                 shed_retry_ms=int(cfg.interval_s * 1000))
        self.reading = None
        self.decision = None
        if override is not None:
            until = None if override["seconds_left"] is None else self.clock.monotonic() + override["seconds_left"]
            self.policy.override(override["profile"], until)
        self.sample(self.clock.monotonic(), force=True)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def sample(self, now: float, force: bool = False) -> None:
        """Timer job: read sensors, decide, apply on change."""
        if not self.enabled:
            if force:
                self.apply(self.config.default_profile, "power management disabled", previous=None)
            return
        self.reading = self.source.read()
        decision = self.policy.decide(self.reading)
        self.decision = decision
        if decision.changed or force:
            self.apply(decision.profile, decision.reason, decision.previous)

    def apply(self, name: str, reason: str, previous: str | None) -> None:
        profile = self.config.profile(name)
        d = self.daemon
        self.governor.apply_profile(profile)
        d.scheduler.set_max_active(self.governor.concurrency_bound)
        d.profile = name
        models = d.models
        models.num_threads = profile.num_threads
        models.updates_allowed = profile.allow_updates
        models.set_variant(profile.variant)
        if profile.allow_updates:
            models.scan()  # apply versions deferred under a stricter profile
        if previous is not None and previous != name:
            log.info("power profile %s -> %s: %s", previous, name, reason)
        d.publish({"event": "profile", "profile": name, "previous": previous, "reason": reason})

    # -- requests ---------------------------------------------------------------------------

    def admit(self, model: Any, priority: str, wait: bool, client: Any = b"") -> None:
        """Door check for one predict from ``client``; raises :class:`Throttled` (with retry_after_ms).

        The queue depth judged is the one ``client`` would find: a place the scheduler
        would free for it by pushing out a bigger holder's newest job does not count.
        """
        depth = self.daemon.scheduler.depth_for(client)
        adm = self.governor.admit(priority, self.clock.monotonic(), depth)
        if adm.ok:
            return
        if wait and adm.counter == "throttled":
            return  # the worker paces it (see pace()); the queue bound still applies
        if adm.counter == "shed":
            self.daemon.stats.shed(model.name, model.version)
        else:
            self.daemon.stats.throttled(model.name, model.version)
        raise Throttled(f"throttled: {adm.reason}", retry_after_ms=adm.retry_after_ms or 0,
                        profile=self.governor.profile.name)

    def pace(self, worker_id: int, priority: str, deadline: float | None, waited_admission: bool) -> None:
        """Worker side: wait for the rate limit (queued requests) and the duty cycle.

        Raises :class:`DeadlineExceeded` when the wait would run past the
        request's deadline (nothing is computed), and :class:`Throttled` when a
        queued request still finds no token after its wait budget.
        """
        clock = self.clock
        if waited_admission:
            for _ in range(1000):
                adm = self.governor.admit(priority, clock.monotonic(), 0)
                if adm.ok:
                    break
                self._sleep(adm.retry_after_ms / 1000.0 if adm.retry_after_ms else 0.01, deadline)
            else:  # pragma: no cover - a token always comes within 1000 refills
                raise Throttled("no token after waiting", retry_after_ms=1000)
        wait = self.governor.wait_before_invoke(worker_id)
        if wait > 0:
            self._sleep(wait, deadline)

    def _sleep(self, seconds: float, deadline: float | None) -> None:
        now = self.clock.monotonic()
        if deadline is not None and now + seconds > deadline:
            raise DeadlineExceeded(f"deadline would pass while waiting {seconds * 1000:.0f} ms for the power budget")
        self.clock.sleep(seconds)

    def record(self, worker_id: int, started: float, duration: float) -> None:
        self.governor.record_invoke(worker_id, started, duration)

    # -- control ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "profile": self.governor.profile.name, "enabled": self.enabled, "source": self.config.source,
            "reading": self.reading.to_dict() if self.reading is not None else None,
            "reason": self.decision.reason if self.decision else None,
            "policy": self.policy.status(), "limits": self.governor.profile.to_dict(),
            "governor": self.governor.status(),
        }

    def override(self, profile: str | None, duration_s: float | None, auto: bool) -> dict[str, Any]:
        """``edged ctl power --profile P [--for D]`` / ``--auto``; raises RequestError for a bad profile."""
        if auto:
            self.policy.auto()
            self.sample(self.clock.monotonic(), force=True)
        elif profile is not None:
            until = self.clock.monotonic() + duration_s if duration_s else None
            previous = self.governor.profile.name
            try:
                decision = self.policy.override(profile, until)
            except PolicyError as exc:
                raise RequestError(str(exc), code=ErrorCode.BAD_REQUEST) from None
            self.decision = decision
            self.apply(decision.profile, decision.reason, previous)
        return self.status()
