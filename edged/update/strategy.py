"""When to check, and whether a found update may be fetched now: pluggable strategies.

A strategy answers two questions for the update service:

* :meth:`Strategy.next_check` – how long until the next check, and why (shown by
  ``edged ctl update status``); ``None`` means only on demand;
* :meth:`Strategy.may_download` – whether a found version may be fetched now
  (``False`` keeps it pending with the reason, re-asked at the next check or
  :meth:`Strategy.poll`).

``off`` and ``periodic`` live here; new strategies register in
:data:`STRATEGIES` by name (the value of ``[update] strategy``).  They decide
only: the service applies.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

from edged.config import UpdateConfig
from edged.update.decide import Decision


class Strategy(Protocol):
    name: str

    def next_check(self, now: float, last: Any | None) -> tuple[float | None, str]:
        """Seconds from ``now`` to the next check (None: on demand only) and why."""

    def may_download(self, decision: Decision) -> tuple[bool, str]:
        """Whether the version in ``decision`` may be downloaded and installed now, and if not why."""


class Off:
    """Never on its own: checks run only on ``edged ctl update check``."""

    name = "off"

    def __init__(self, cfg: UpdateConfig, rng: random.Random | None = None) -> None:
        self.cfg = cfg

    def next_check(self, now: float, last: Any | None) -> tuple[float | None, str]:
        return None, "strategy off: checks only on `edged ctl update check`"

    def may_download(self, decision: Decision) -> tuple[bool, str]:
        return True, "asked for"


class Periodic:
    """Every ``interval_s`` ± ``jitter``; the first check a random part of one interval after start.

    The jitter spreads a fleet's checks: devices that boot together (a power cut,
    a site) would otherwise hit the registry in the same second forever.
    """

    name = "periodic"

    def __init__(self, cfg: UpdateConfig, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.rng = rng or random.Random()

    def next_check(self, now: float, last: Any | None) -> tuple[float | None, str]:
        interval, jitter = self.cfg.interval_s, self.cfg.jitter
        if last is None:
            delay = interval * self.rng.uniform(max(0.0, jitter), 1.0) if jitter else interval
            return delay, f"first periodic check (interval {interval:g} s, jitter {jitter:g})"
        delay = interval * self.rng.uniform(1 - jitter, 1 + jitter)
        return delay, f"periodic: every {interval:g} s ± {100 * jitter:g} %"

    def may_download(self, decision: Decision) -> tuple[bool, str]:
        return True, "periodic strategy downloads what it finds"


STRATEGIES: dict[str, Callable[..., Strategy]] = {"off": Off, "periodic": Periodic}


def make_strategy(cfg: UpdateConfig, rng: random.Random | None = None) -> Strategy:
    """The strategy named by ``cfg.strategy`` (validated by the config loader)."""
    return STRATEGIES[cfg.strategy](cfg, rng)
