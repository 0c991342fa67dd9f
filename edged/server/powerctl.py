"""Wires the power layer into the daemon: sample on the tick, decide; the daemon enforces.

Every ``power.interval_s`` the main loop reads the sensor source, lets the
:class:`~edged.power.policy.Policy` decide, and on a change the controller
returns a :class:`ProfileChange` that the daemon applies everywhere it matters
(the controller holds no reference to the daemon and writes none of its fields):

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
from dataclasses import dataclass
from typing import Any

from edged.errors import DeadlineExceeded, ErrorCode, RequestError, Throttled
from edged.power import Admission, Governor, Policy, PolicyError, PowerConfig, Profile, make_source
from edged.seams import Clock

#: :meth:`PowerController.admit`'s answer to a ``wait`` request over the rate limit:
#: admitted, its token still owed (the worker waits for it).  A ``wait`` request that
#: gets a token at the door owes none and is paced like any other.
DEFERRED = Admission(False, None, "admitted; its worker waits for a token", "throttled")

log = logging.getLogger("edged.power")


@dataclass(frozen=True)
class ProfileChange:
    """A profile to apply, decided by the controller and applied by the daemon.

    ``concurrency_bound``: workers allowed to run (None: all); ``profile`` carries
    ``num_threads``, ``allow_updates`` and ``variant`` for the repository.
    """

    name: str
    reason: str
    previous: str | None
    profile: Profile
    concurrency_bound: int | None

    def event(self) -> dict[str, Any]:
        return {"event": "profile", "profile": self.name, "previous": self.previous, "reason": self.reason}


class PowerController:
    def __init__(self, config: PowerConfig, clock: Clock, *, workers: int, queue_size: int) -> None:
        self.clock = clock
        self.workers = workers
        self.queue_size = queue_size
        #: The profile to start in, for the daemon to apply once it has what it applies it to.
        self.initial = self.configure(config, first=True)

    def configure(self, cfg: PowerConfig, first: bool = False, *,
                  queue_size: int | None = None) -> ProfileChange | None:
        """(Re)build source, policy and governor from the ``[power]`` section; returns the profile to apply."""
        if queue_size is not None:
            self.queue_size = queue_size
        self.config = cfg
        self.source = make_source(cfg.source, cfg.sysfs_root, cfg.file, self.clock, cfg.thermal_zones)
        override = None if first else self.policy.status()["override"]
        self.policy = Policy(cfg, self.clock)
        start = cfg.profile(cfg.default_profile)
        self.governor = Governor(start, self.clock, workers=self.workers, queue_size=self.queue_size,
                                 shed_retry_ms=int(cfg.interval_s * 1000))
        self.reading = None
        self.decision = None
        if override is not None:
            until = None if override["seconds_left"] is None else self.clock.monotonic() + override["seconds_left"]
            self.policy.override(override["profile"], until)
        return self.sample(self.clock.monotonic(), force=True)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def sample(self, now: float, force: bool = False) -> ProfileChange | None:
        """Timer job: read sensors and decide; returns the profile to apply on a change (or ``force``)."""
        if not self.enabled:
            if force:
                return self._change(self.config.default_profile, "power management disabled", previous=None)
            return None
        self.reading = self.source.read()
        decision = self.policy.decide(self.reading)
        self.decision = decision
        if decision.changed or force:
            return self._change(decision.profile, decision.reason, decision.previous)
        return None

    def _change(self, name: str, reason: str, previous: str | None) -> ProfileChange:
        profile = self.config.profile(name)
        self.governor.apply_profile(profile)  # the governor is the controller's own
        if previous is not None and previous != name:
            log.info("power profile %s -> %s: %s", previous, name, reason)
        return ProfileChange(name, reason, previous, profile, self.governor.concurrency_bound)

    # -- requests ---------------------------------------------------------------------------

    def admit(self, priority: str, wait: bool, queue_depth: int) -> Admission | None:
        """Door check for one predict: None to admit it (its token taken), :data:`DEFERRED` to
        admit a ``wait`` request over the rate limit whose worker waits for its token
        (:meth:`pace`; the queue bound still applies), else the refusal (see :meth:`refusal`)."""
        adm = self.governor.admit(priority, self.clock.monotonic(), queue_depth)
        if adm.ok:
            return None
        if wait and adm.counter == "throttled":
            return DEFERRED
        return adm

    def refusal(self, adm: Admission) -> Throttled:
        """The error a refused admission is answered with (``retry_after_ms``, the profile)."""
        return Throttled(f"throttled: {adm.reason}", retry_after_ms=adm.retry_after_ms or 0,
                         profile=self.governor.profile.name)

    def pace(self, worker_id: int, priority: str, deadline: float | None, owes_token: bool) -> None:
        """Worker side: wait for the rate limit (queued requests) and the duty cycle.

        Raises :class:`DeadlineExceeded` when the wait would run past the
        request's deadline (nothing is computed), and :class:`Throttled` when a
        queued request still finds no token after its wait budget.
        """
        clock = self.clock
        if owes_token:  # admitted as DEFERRED: its token is taken here, once
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

    def override(self, profile: str | None, duration_s: float | None, auto: bool) -> ProfileChange | None:
        """``edged ctl power --profile P [--for D]`` / ``--auto``: the profile to apply (None: show only).

        Raises RequestError for an unknown profile.
        """
        if auto:
            self.policy.auto()
            return self.sample(self.clock.monotonic(), force=True)
        if profile is not None:
            until = self.clock.monotonic() + duration_s if duration_s else None
            previous = self.governor.profile.name
            try:
                decision = self.policy.override(profile, until)
            except PolicyError as exc:
                raise RequestError(str(exc), code=ErrorCode.BAD_REQUEST) from None
            self.decision = decision
            return self._change(decision.profile, decision.reason, previous)
        return None
