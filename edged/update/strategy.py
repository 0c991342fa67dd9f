"""When to check, and whether a found update may be fetched now: pluggable strategies.

A strategy answers three questions for the update service:

* :meth:`Strategy.next_check` – how long until the next check, and why (shown by
  ``edged ctl update status``); ``None`` means only on demand;
* :meth:`Strategy.may_download` – whether a found version may be fetched and
  installed now (``False`` keeps it pending with the reason; the service looks
  again every ``recheck_s`` and whenever the power profile changes);
* :meth:`Strategy.hold` – asked between chunks of a download in progress: a
  reason pauses it (the ``.part`` file stays, the next try resumes).

Strategies (``[update] strategy``):

* ``off`` – checks only on ``edged ctl update check``;
* ``periodic`` – every ``interval_s`` ± ``jitter``;
* ``conditional`` – periodic checks, but a found update is fetched and applied
  only while every configured condition holds (:mod:`edged.update.conditions`);
* ``adaptive`` – the interval halves while the serving version looks unhealthy
  and doubles while it is healthy, between ``min_interval_s`` and
  ``max_interval_s``, with jitter; with ``use_conditions`` it obeys the
  conditions too.

They decide only: the service applies.  Each decision with its numbers is a log
line and an event (``update-interval`` here; ``update-deferred`` and the rest
from the client).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from edged.config import UpdateConfig
from edged.update.conditions import Situation, hold_back
from edged.update.decide import Decision

log = logging.getLogger("edged.update")


@dataclass
class Health:
    """The serving versions' health, judged by the daemon with the ``[health]`` thresholds.

    ``reasons``: why a serving version looks unhealthy (empty: healthy);
    ``evidence``: whether any serving version has enough samples to judge;
    ``signals``: the numbers behind it per ``model/version`` (for events and logs).
    """

    reasons: list[str] = field(default_factory=list)
    evidence: bool = False
    signals: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"reasons": list(self.reasons), "evidence": self.evidence, "signals": self.signals}


@dataclass
class Context:
    """What strategies may look at: the device's situation and health, an event sink, randomness."""

    situation: Callable[[], Situation] = Situation
    health: Callable[[], Health | None] = lambda: None
    emit: Callable[[dict[str, Any]], None] = lambda event: None
    rng: random.Random = field(default_factory=random.Random)


class Strategy(Protocol):
    name: str

    def next_check(self, now: float, last: Any | None) -> tuple[float | None, str]:
        """Seconds from ``now`` to the next check (None: on demand only) and why."""

    def may_download(self, decision: Decision) -> tuple[bool, str]:
        """Whether the version in ``decision`` (``decision.bytes`` long) may be fetched now, and if not why."""

    def hold(self, decision: Decision) -> str | None:
        """During a download: a reason to pause it now, or None to go on."""


class Off:
    """Never on its own: checks run only on ``edged ctl update check``."""

    name = "off"

    def __init__(self, cfg: UpdateConfig, ctx: Context | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx or Context()

    def next_check(self, now: float, last: Any | None) -> tuple[float | None, str]:
        return None, "strategy off: checks only on `edged ctl update check`"

    def may_download(self, decision: Decision) -> tuple[bool, str]:
        return True, "asked for"

    def hold(self, decision: Decision) -> str | None:
        return None


class Periodic(Off):
    """Every ``interval_s`` ± ``jitter``; the first check a random part of one interval after start.

    The jitter spreads a fleet's checks: devices that boot together (a power cut,
    a site) would otherwise hit the registry in the same second forever.
    """

    name = "periodic"

    def _jittered(self, interval: float, last: Any | None) -> float:
        jitter = self.cfg.jitter
        if last is None:
            return interval * self.ctx.rng.uniform(jitter, 1.0) if jitter else interval
        return interval * self.ctx.rng.uniform(1 - jitter, 1 + jitter)

    def next_check(self, now: float, last: Any | None) -> tuple[float | None, str]:
        interval = self.cfg.interval_s
        delay = self._jittered(interval, last)
        first = "first periodic check" if last is None else "periodic"
        return delay, f"{first}: every {interval:g} s ± {100 * self.cfg.jitter:g} %"

    def may_download(self, decision: Decision) -> tuple[bool, str]:
        return True, "periodic strategy downloads what it finds"


class Conditional(Periodic):
    """Periodic checks; a found update waits until every configured condition holds."""

    name = "conditional"
    uses_conditions = True

    def _reasons(self, need_bytes: int) -> tuple[list[str], Situation]:
        situation = self.ctx.situation()
        return hold_back(self.cfg, situation, need_bytes), situation

    def may_download(self, decision: Decision) -> tuple[bool, str]:
        if not self.uses_conditions:
            return True, "no conditions configured"
        reasons, situation = self._reasons(decision.bytes)
        if reasons:
            return False, "; ".join(reasons)
        return True, f"conditions hold ({_numbers(situation)})"

    def hold(self, decision: Decision) -> str | None:
        if not self.uses_conditions:
            return None
        reasons, _ = self._reasons(decision.bytes)
        return "; ".join(reasons) or None


class Adaptive(Conditional):
    """The check interval follows the serving version's health, between min and max, with jitter."""

    name = "adaptive"

    def __init__(self, cfg: UpdateConfig, ctx: Context | None = None) -> None:
        super().__init__(cfg, ctx)
        self.uses_conditions = cfg.use_conditions
        self.interval = min(max(cfg.interval_s, cfg.min_interval_s), cfg.max_interval_s)

    def next_check(self, now: float, last: Any | None) -> tuple[float | None, str]:
        if last is None:
            return self._jittered(self.interval, None), f"first adaptive check: interval {self.interval:g} s"
        health = self.ctx.health()
        verdict, why = judge(health)
        old = self.interval
        if verdict == "unhealthy":
            self.interval = max(self.cfg.min_interval_s, old / 2)
        else:  # healthy, or no signal (no traffic): nothing calls for fresh models sooner
            self.interval = min(self.cfg.max_interval_s, old * 2)
        if self.interval != old:
            log.info("update interval %g s -> %g s: serving version %s (%s)", old, self.interval, verdict, why)
            self.ctx.emit({"event": "update-interval", "from_s": old, "to_s": self.interval, "verdict": verdict,
                           "reason": why, "health": health.to_dict() if health else None})
        bound = " (at min_interval_s)" if self.interval == self.cfg.min_interval_s else \
            " (at max_interval_s)" if self.interval == self.cfg.max_interval_s else ""
        return self._jittered(self.interval, last), f"adaptive: {verdict} ({why}); interval {self.interval:g} s{bound}"


def judge(h: Health | None) -> tuple[str, str]:
    """("unhealthy" | "healthy" | "no signal", why with the numbers) for the adaptive interval."""
    if h is not None and h.reasons:
        return "unhealthy", "; ".join(h.reasons)
    if h is None or not h.evidence:
        return "no signal", "too few requests in the health window (health.min_samples)"
    parts = []
    for key, s in h.signals.items():
        parts.append(f"{key}: error rate {s.get('error_rate', 0):.1%}, low-confidence "
                     f"{s.get('low_confidence_share', 0):.1%}"
                     + (f", live accuracy {s['accuracy']:.1%}" if s.get("accuracy") is not None else "")
                     + f" over {s.get('window', 0)} requests")
    return "healthy", "; ".join(parts) or "no signal past its threshold"


def _numbers(s: Situation) -> str:
    parts = [f"profile {s.profile}"] if s.profile else []
    if s.battery_percent is not None:
        parts.append(f"battery {s.battery_percent:.0f} %")
    if s.on_ac is not None:
        parts.append("on AC" if s.on_ac else "on battery")
    if s.cpu_percent is not None:
        parts.append(f"CPU {s.cpu_percent:.0f} %")
    if s.local_time is not None:
        parts.append(f"local {s.local_time:%H:%M}")
    return ", ".join(parts) or "no readings"


STRATEGIES: dict[str, Callable[[UpdateConfig, Context], Strategy]] = {
    "off": Off, "periodic": Periodic, "conditional": Conditional, "adaptive": Adaptive,
}


def make_strategy(cfg: UpdateConfig, ctx: Context | None = None) -> Strategy:
    """The strategy named by ``cfg.strategy`` (validated by the config loader)."""
    return STRATEGIES[cfg.strategy](cfg, ctx or Context())
