"""The power policy: which profile a reading calls for, without flapping.

API
---
``Policy(config, clock=None)``
    Starts in ``config.default_profile``; the first :meth:`Policy.decide` jumps
    straight to whatever the rules say.
``Policy.decide(reading) -> Decision``
    Call once per sample (every ``power.interval_s``).  ``Decision.changed``
    tells the caller to apply ``Decision.profile`` (governor, runtime, events).
``Policy.override(profile, until=None) -> Decision``
    Pin a profile (``until`` is a ``clock.monotonic()`` deadline; None = until
    :meth:`Policy.auto`).  Raises :class:`PolicyError` for an unknown profile.
``Policy.auto() -> None``
    Drop the override; the next ``decide`` follows the rules at once.
``Policy.profile`` / ``Policy.status()``
    The profile in effect / a JSON-able description for the ``power`` op.

How a profile is chosen
-----------------------
1. *Target*: of the rules that match the reading, the one naming the most
   severe profile wins (see :mod:`edged.power.config`); no match means
   ``default_profile``.  Unknown readings never match.
2. *More severe than now*: switch immediately.  Protection must not wait: a
   battery at 9 % or a core at 85 °C is a reason to cut load this sample, and
   switching down too eagerly only costs throughput, never hardware.
3. *Less severe than now* (relaxing): first **hysteresis** - the rules are
   evaluated again with every threshold widened by its field's margin
   (``battery_percent < 30`` becomes ``< 35``; ``temperature_c >= 80`` becomes
   ``>= 75``), and the most severe profile still held that way (but no more
   severe than the current one) is kept.  Then **dwell** - even a clear
   relaxation waits until ``min_dwell_s`` has passed since the last change.
   Hysteresis stops flapping around a threshold; dwell stops flapping on
   boolean fields (``on_ac``, ``throttled``) that have no margin.
4. An *override* wins over everything until it expires or :meth:`auto` is
   called; afterwards the rules apply at once, with no dwell, because the time
   spent in the overridden profile says nothing about the policy's choice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from edged.power.config import PROFILE_ORDER, PowerConfig
from edged.power.sensors import Reading
from edged.seams import Clock


class PolicyError(ValueError):
    """A policy call was given a bad argument (an unknown profile name)."""


@dataclass(frozen=True)
class Decision:
    """The profile in effect after a decision, why, and whether it just changed."""

    profile: str
    reason: str
    changed: bool
    previous: str | None = None
    overridden: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "reason": self.reason, "changed": self.changed,
                "previous": self.previous, "overridden": self.overridden}


def _severity(profile: str) -> int:
    return PROFILE_ORDER.index(profile)


class Policy:
    """Turns readings into profile decisions with hysteresis, dwell and manual override.

    Thread-safe: ``decide`` runs on the daemon's tick while ``override``/``auto``
    come from control commands, possibly on another thread.
    """

    def __init__(self, config: PowerConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self._lock = threading.Lock()
        self._profile = config.default_profile
        self._since = self.clock.monotonic()
        self._fresh = True  # the next decide follows the rules with no hysteresis or dwell
        self._override: tuple[str, float | None] | None = None
        self._last: Decision | None = None

    @property
    def profile(self) -> str:
        """The profile in effect now."""
        with self._lock:
            return self._profile

    @property
    def last(self) -> Decision | None:
        """The most recent decision (None before the first)."""
        with self._lock:
            return self._last

    def decide(self, reading: Reading) -> Decision:
        """Choose the profile for ``reading``; never raises for any reading."""
        with self._lock:
            now = self.clock.monotonic()
            old = self._profile
            overridden = False
            if self._override is not None and self._override[1] is not None and now >= self._override[1]:
                self._override = None
                self._fresh = True
            if self._override is not None:
                new, until = self._override
                overridden = True
                reason = "manual override" + (f" ({until - now:.0f}s left)" if until is not None else "")
            else:
                new, reason = self._choose(reading, old, now)
            return self._commit(new, reason, old, now, overridden)

    def override(self, profile: str, until: float | None = None) -> Decision:
        """Pin ``profile`` until ``until`` (clock.monotonic() time) or :meth:`auto`.

        Takes effect at once, with no dwell.  Raises :class:`PolicyError` for a
        profile not in the config, or an ``until`` already in the past.
        """
        if profile not in self.config.profiles:
            raise PolicyError(f"unknown profile {profile!r} (known: {', '.join(PROFILE_ORDER)})")
        with self._lock:
            now = self.clock.monotonic()
            if until is not None and until <= now:
                raise PolicyError(f"override until {until:g} is not in the future (now {now:g})")
            self._override = (profile, until)
            reason = "manual override" + (f" ({until - now:.0f}s left)" if until is not None else "")
            return self._commit(profile, reason, self._profile, now, True)

    def auto(self) -> None:
        """Drop any override; the next :meth:`decide` follows the rules immediately."""
        with self._lock:
            if self._override is not None:
                self._override = None
                self._fresh = True

    def status(self) -> dict[str, Any]:
        """JSON-able state for the ``power`` op."""
        with self._lock:
            now = self.clock.monotonic()
            override = None
            if self._override is not None:
                name, until = self._override
                override = {"profile": name, "seconds_left": None if until is None else max(0.0, until - now)}
            return {"profile": self._profile, "since_s": now - self._since, "override": override,
                    "last": self._last.to_dict() if self._last else None,
                    "rules": [r.to_dict() for r in self.config.rules]}

    # -- internals (called with the lock held) --------------------------------------------------

    def _commit(self, new: str, reason: str, old: str, now: float, overridden: bool) -> Decision:
        changed = new != old
        if changed:
            self._profile = new
            self._since = now
        self._last = Decision(new, reason, changed, old if changed else None, overridden)
        return self._last

    def _evaluate(self, reading: Reading, margins: dict[str, float] | None = None,
                  cap: int | None = None) -> tuple[str, str] | None:
        """The most severe rule matching ``reading`` (at most severity ``cap``): (profile, reason)."""
        best: tuple[int, str, str] | None = None
        for rule in self.config.rules:
            severity = _severity(rule.profile)
            if cap is not None and severity > cap:
                continue
            if best is not None and severity <= best[0]:
                continue  # ties keep the first rule, so reasons name it
            why = rule.when.match(reading, margins)
            if why is not None:
                best = (severity, rule.profile, f"{why} (rule {rule.index})")
        return (best[1], best[2]) if best else None

    def _target(self, reading: Reading) -> tuple[str, str]:
        found = self._evaluate(reading)
        if found is None:
            return self.config.default_profile, f"no rule matched (default {self.config.default_profile})"
        return found

    def _choose(self, reading: Reading, old: str, now: float) -> tuple[str, str]:
        target, why = self._target(reading)
        if self._fresh:
            self._fresh = False
            return target, why
        if _severity(target) >= _severity(old):
            return target, why
        # Relaxing.  Hysteresis: which profile do the rules still hold with widened thresholds?
        held = self._evaluate(reading, dict(self.config.hysteresis), cap=_severity(old))
        candidate, candidate_why = target, why
        if held is not None and _severity(held[0]) > _severity(target):
            candidate, candidate_why = held
        if candidate == old:
            return old, f"staying in {old}: {candidate_why}"
        left = self.config.min_dwell_s - (now - self._since)
        if left > 0:
            return old, f"staying in {old} for min_dwell_s ({left:.0f}s left); then {candidate}: {candidate_why}"
        return candidate, candidate_why


__all__ = ["Decision", "Policy", "PolicyError"]
