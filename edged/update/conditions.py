"""When a device can afford an update: the conditions of the ``conditional`` strategy (pure logic).

A :class:`Situation` is what the device looks like now (power profile, battery,
CPU, free disk, the link the default route takes, local time); :func:`hold_back`
lists every configured condition that does not hold, each with the numbers
behind it, so ``edged ctl update status`` and the ``update-deferred`` event say
exactly what holds an update back.  An unknown reading never blocks: a device
without a battery sensor is not "low on battery".
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edged.config import UpdateConfig

_WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


@dataclass
class Situation:
    allow_updates: bool = True  # the power profile's allow_updates
    profile: str = ""
    battery_percent: float | None = None
    on_ac: bool | None = None
    cpu_percent: float | None = None
    free_bytes: int | None = None  # on the repository's file system
    interface: str | None = None  # of the default route
    local_time: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["local_time"] = self.local_time.strftime("%H:%M") if self.local_time else None
        return d


def parse_window(text: str) -> tuple[int, int]:
    """``"02:00-05:00"`` → minutes of the day (120, 300); raises ValueError naming the text."""
    m = _WINDOW_RE.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"maintenance window {text!r}: expected HH:MM-HH:MM, e.g. \"02:00-05:00\"")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    return h1 * 60 + m1, h2 * 60 + m2


def in_windows(windows: list[str], when: datetime) -> bool:
    """True when ``when`` (local time) falls in one of the windows; a window may cross midnight."""
    minute = when.hour * 60 + when.minute
    for text in windows:
        start, end = parse_window(text)
        if start <= end:
            if start <= minute < end:
                return True
        elif minute >= start or minute < end:  # e.g. 22:00-02:00
            return True
    return False


def hold_back(cfg: UpdateConfig, s: Situation, need_bytes: int) -> list[str]:
    """Every configured condition that does not hold now, with its numbers; [] means go."""
    reasons = []
    if cfg.require_profile_allows and not s.allow_updates:
        reasons.append(f"power profile {s.profile or '?'} does not allow updates")
    if cfg.min_battery_percent > 0 and s.on_ac is not True and s.battery_percent is not None \
            and s.battery_percent < cfg.min_battery_percent:
        reasons.append(f"battery {s.battery_percent:.0f} % < {cfg.min_battery_percent:g} % and not on AC")
    if cfg.max_cpu_percent < 100 and s.cpu_percent is not None and s.cpu_percent > cfg.max_cpu_percent:
        reasons.append(f"CPU {s.cpu_percent:.0f} % > {cfg.max_cpu_percent:g} %")
    if cfg.windows and s.local_time is not None and not in_windows(cfg.windows, s.local_time):
        reasons.append(f"outside the maintenance window{'s' if len(cfg.windows) > 1 else ''} "
                       f"{', '.join(cfg.windows)} (local time {s.local_time:%H:%M})")
    if s.free_bytes is not None and need_bytes and s.free_bytes < cfg.min_free_disk_factor * need_bytes:
        reasons.append(f"free disk {s.free_bytes / 1e6:.1f} MB < {cfg.min_free_disk_factor:g} x the download "
                       f"({need_bytes / 1e6:.1f} MB)")
    if cfg.metered_interfaces and s.interface in cfg.metered_interfaces:
        reasons.append(f"on a metered link ({s.interface})")
    return reasons


def default_route_interface(route: Path = Path("/proc/net/route")) -> str | None:
    """The interface of the IPv4 default route (destination 00000000), or None when unknown."""
    try:
        lines = route.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return fields[0]
    return None
