"""Sensor sources: one :class:`Reading` of battery, mains, CPU, temperature and throttling.

API
---
``Reading``
    A frozen snapshot.  Every field is ``None`` when unknown; the policy never
    fires a rule on an unknown value.  ``value(field)`` is what the rule
    language reads (see :data:`NUMERIC_FIELDS` and :data:`BOOL_FIELDS`).
``PsutilSource(ps=None, clock=None, thermal_zones=(), sysfs_root="/sys")``
    psutil's ``sensors_battery``, ``sensors_temperatures``,
    ``cpu_percent(interval=None)`` and ``getloadavg``.  ``ps`` is any object
    with those attributes (default: the psutil module), so tests pass fakes.
    psutil has no throttling flags, so the Raspberry Pi firmware's
    ``get_throttled`` is read from ``sysfs_root`` when present.
``SysfsSource(root="/sys", proc_root=None, clock=None, thermal_zones=())``
    Linux sysfs: ``class/power_supply/*`` and ``class/thermal/thermal_zone*``,
    plus the Raspberry Pi firmware's ``get_throttled`` bits when present.
    CPU use and load come from ``proc_root`` (default: ``<root>/../proc``,
    i.e. ``/proc`` for ``/sys``) ``stat`` and ``loadavg``, so a fake tree in a
    temporary directory covers everything.
``FileSource(path, clock=None)``
    A JSON object written by something else (a UPS daemon, a test harness):
    ``{"battery_percent": 42, "on_ac": false, "temperature_c": 51.0,
    "cpu_percent": 12.5, "load_avg": [0.5, 0.4, 0.3], "throttled": false}``.
    Missing keys are unknown.  ``throttled`` may be a bool, a dict of flags,
    or the firmware's bit mask as an int or hex string.
``make_source(kind, sysfs_root="/sys", file="", clock=None, thermal_zones=())``
    Builds one of the above from ``[power]`` config values; raises
    :class:`SensorConfigError` for an unknown kind or a file source without a path.

Sources keep a little state (the previous CPU sample, which sensors are
failing), so use one instance per sampling loop and call ``read()`` from one
thread at a time.  ``read()`` only touches small sysfs/procfs files, but
psutil's ``sensors_temperatures`` can take tens of milliseconds on some
machines; a caller that must never stall may run it off the main loop.

Failure rules
-------------
``read()`` never raises.  A sensor that is simply absent (no battery, no
thermal zones, psutil without ``sensors_battery`` on this platform) reads as
``None`` quietly.  A sensor that is present but fails (an ``OSError`` on read,
a value that does not parse) also reads as ``None``, and is logged once on
``edged.power`` as a warning when it starts failing and once at info when it
recovers - not on every sample, because the daemon samples every few seconds
for months and a broken thermal driver must not fill the journal.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edged.seams import Clock

log = logging.getLogger("edged.power")

#: Rule fields holding numbers (``load_avg`` means the 1-minute load average).
NUMERIC_FIELDS = frozenset({"battery_percent", "cpu_percent", "temperature_c", "load_avg"})
#: Rule fields holding booleans (``throttled`` is true when any current throttle flag is set).
BOOL_FIELDS = frozenset({"on_ac", "throttled", "under_voltage", "freq_capped", "soft_temp_limit"})

#: Raspberry Pi ``get_throttled`` bits: the low nibble is "now", bits 16-19 "since boot".
THROTTLE_BITS: dict[str, int] = {
    "under_voltage": 0,
    "freq_capped": 1,
    "throttled": 2,
    "soft_temp_limit": 3,
}
_OCCURRED_SHIFT = 16
CURRENT_FLAGS = tuple(THROTTLE_BITS)

# Readings outside this range are driver garbage (-273.15 from an unplugged probe,
# 127/255 from a saturated register), not a device about to melt or freeze.
_PLAUSIBLE_C = (-40.0, 150.0)

PI_THROTTLED_PATH = "devices/platform/soc/soc:firmware/get_throttled"


class SensorConfigError(ValueError):
    """A sensor source was asked for with bad arguments (an unknown kind, no file path)."""


@dataclass(frozen=True)
class Reading:
    """One sample of the device's power state; ``None`` everywhere means "unknown".

    ``temperature_c`` is the hottest plausible zone among the relevant ones.
    ``throttled`` holds the flags in :data:`CURRENT_FLAGS` (what limits the
    device now) and, from the Pi firmware, ``<flag>_occurred`` (since boot).
    ``taken_at`` is the source clock's ``monotonic()`` at the sample, so it
    compares with the policy's and governor's times.
    """

    battery_percent: float | None = None
    on_ac: bool | None = None
    cpu_percent: float | None = None
    load_avg: tuple[float, float, float] | None = None
    temperature_c: float | None = None
    throttled: dict[str, bool] | None = None
    source: str = "none"
    taken_at: float = 0.0

    @property
    def is_throttled(self) -> bool | None:
        """True if any current throttle flag is set; None when throttling is unknown."""
        if self.throttled is None:
            return None
        return any(self.throttled.get(flag, False) for flag in CURRENT_FLAGS)

    def value(self, name: str) -> float | bool | None:
        """The value a rule sees for ``name``; raises KeyError for a field rules cannot use."""
        if name in ("battery_percent", "cpu_percent", "temperature_c", "on_ac"):
            return getattr(self, name)
        if name == "load_avg":
            return None if self.load_avg is None else self.load_avg[0]
        if name == "throttled":
            return self.is_throttled
        if name in THROTTLE_BITS:
            return None if self.throttled is None else self.throttled.get(name)
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for the ``power`` op and events)."""
        return {
            "battery_percent": self.battery_percent,
            "on_ac": self.on_ac,
            "cpu_percent": self.cpu_percent,
            "load_avg": list(self.load_avg) if self.load_avg is not None else None,
            "temperature_c": self.temperature_c,
            "throttled": dict(self.throttled) if self.throttled is not None else None,
            "source": self.source,
            "taken_at": self.taken_at,
        }


class Source(Protocol):
    """Anything with a ``name`` and a ``read()`` that never raises."""

    name: str

    def read(self) -> Reading: ...


def decode_throttled(bits: int) -> dict[str, bool]:
    """Decode the Pi firmware's ``get_throttled`` mask into named flags."""
    flags: dict[str, bool] = {}
    for name, bit in THROTTLE_BITS.items():
        flags[name] = bool(bits >> bit & 1)
        flags[f"{name}_occurred"] = bool(bits >> (bit + _OCCURRED_SHIFT) & 1)
    return flags


def parse_throttled_text(text: str) -> int:
    """Parse ``50005``, ``0x50005`` or vcgencmd's ``throttled=0x50005``; raises ValueError."""
    text = text.strip()
    if "=" in text:
        text = text.split("=", 1)[1].strip()
    return int(text, 16)


class _Health:
    """Remembers which sensors are failing so each failure is logged once, and each recovery once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.failing: dict[str, str] = {}

    def failed(self, sensor: str, error: object) -> None:
        if sensor not in self.failing:
            log.warning("power sensor %s/%s failing: %s (reading it as unknown until it recovers)",
                        self.source, sensor, error)
        self.failing[sensor] = str(error)

    def ok(self, sensor: str) -> None:
        if self.failing.pop(sensor, None) is not None:
            log.info("power sensor %s/%s recovered", self.source, sensor)

    def run(self, sensor: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, or None (logged once) when it raises."""
        try:
            value = fn()
        except Exception as exc:  # a sensor must never take the daemon down
            self.failed(sensor, f"{type(exc).__name__}: {exc}")
            return None
        self.ok(sensor)
        return value


def _hottest(temps: Iterable[tuple[str, float]], zones: tuple[str, ...]) -> float | None:
    """Max of plausible temperatures whose zone name starts with one of ``zones`` (all if empty)."""
    best: float | None = None
    for name, celsius in temps:
        if zones and not any(name.startswith(z) for z in zones):
            continue
        if not _PLAUSIBLE_C[0] < celsius < _PLAUSIBLE_C[1]:  # also false for NaN
            continue
        best = celsius if best is None else max(best, celsius)
    return best


# -- psutil ------------------------------------------------------------------------------------


class PsutilSource:
    """Readings from psutil (any platform psutil supports; fields it cannot see are None)."""

    name = "psutil"

    def __init__(self, ps: Any = None, clock: Clock | None = None, thermal_zones: Iterable[str] = (),
                 sysfs_root: str | os.PathLike[str] = "/sys") -> None:
        if ps is None:
            try:
                import psutil as ps  # deferred: tests inject fakes and never need it
            except ImportError as exc:  # pragma: no cover - psutil is a dependency
                raise SensorConfigError(f"power.source = 'psutil' but psutil is not importable: {exc}") from None
        self.ps = ps
        self.clock = clock or Clock()
        self.zones = tuple(thermal_zones)
        self.throttled_path = Path(sysfs_root) / PI_THROTTLED_PATH
        self.health = _Health(self.name)
        self._primed = False

    def read(self) -> Reading:
        """One sample; never raises (see the module docstring)."""
        battery = self.health.run("battery", self._battery)
        temperature = self.health.run("temperature", self._temperature)
        cpu = self.health.run("cpu_percent", self._cpu)
        load = self.health.run("load_avg", self._load)
        throttled = self.health.run("throttled", self._throttled)
        return Reading(
            battery_percent=battery[0] if battery else None,
            on_ac=battery[1] if battery else None,
            cpu_percent=cpu,
            load_avg=load,
            temperature_c=temperature,
            throttled=throttled,
            source=self.name,
            taken_at=self.clock.monotonic(),
        )

    def _throttled(self) -> dict[str, bool] | None:
        raw = _read_text(self.throttled_path)
        return None if raw is None else decode_throttled(parse_throttled_text(raw))

    def _battery(self) -> tuple[float | None, bool | None] | None:
        fn = getattr(self.ps, "sensors_battery", None)
        if fn is None:  # not implemented on this platform
            return None
        info = fn()
        if info is None:  # no battery
            return None
        percent = float(info.percent) if info.percent is not None else None
        plugged = info.power_plugged
        return percent, (bool(plugged) if plugged is not None else None)

    def _temperature(self) -> float | None:
        fn = getattr(self.ps, "sensors_temperatures", None)
        if fn is None:
            return None
        temps = fn() or {}
        return _hottest(((name, float(t.current)) for name, entries in temps.items() for t in entries
                         if t.current is not None), self.zones)

    def _cpu(self) -> float | None:
        # interval=None compares with the previous call; the very first call has
        # nothing to compare with and returns a meaningless 0.0, so report unknown.
        value = float(self.ps.cpu_percent(interval=None))
        if not self._primed:
            self._primed = True
            return None
        return value

    def _load(self) -> tuple[float, float, float] | None:
        fn = getattr(self.ps, "getloadavg", None)
        if fn is None:
            return None
        one, five, fifteen = fn()
        return float(one), float(five), float(fifteen)


# -- sysfs -------------------------------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    """The stripped text of ``path``; None if it does not exist (other OSErrors propagate)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


class SysfsSource:
    """Readings straight from Linux sysfs and procfs; no psutil needed."""

    name = "sysfs"

    def __init__(self, root: str | os.PathLike[str] = "/sys", proc_root: str | os.PathLike[str] | None = None,
                 clock: Clock | None = None, thermal_zones: Iterable[str] = ()) -> None:
        self.root = Path(root)
        self.proc_root = Path(proc_root) if proc_root is not None else self.root.parent / "proc"
        self.clock = clock or Clock()
        self.zones = tuple(thermal_zones)
        self.health = _Health(self.name)
        self._last_cpu: tuple[int, int] | None = None  # (busy, total) jiffies at the previous sample

    def read(self) -> Reading:
        """One sample; never raises (see the module docstring)."""
        supplies = self._power_supplies()
        return Reading(
            battery_percent=supplies[0],
            on_ac=supplies[1],
            cpu_percent=self.health.run("cpu_percent", self._cpu),
            load_avg=self.health.run("load_avg", self._load),
            temperature_c=self._temperature(),
            throttled=self.health.run("throttled", self._throttled),
            source=self.name,
            taken_at=self.clock.monotonic(),
        )

    def _power_supplies(self) -> tuple[float | None, bool | None]:
        base = self.root / "class" / "power_supply"
        capacities: list[float] = []
        statuses: list[str] = []
        external: list[bool] = []
        try:
            entries = sorted(base.iterdir()) if base.is_dir() else []
        except OSError as exc:
            self.health.failed("power_supply", exc)
            return None, None
        self.health.ok("power_supply")
        for supply in entries:
            sensor = f"power_supply/{supply.name}"
            try:
                # scope=Device marks a peripheral's battery (a wireless mouse), not ours.
                if _read_text(supply / "scope") == "Device":
                    continue
                kind = _read_text(supply / "type")
                if kind == "Battery":
                    capacity = _read_text(supply / "capacity")
                    status = _read_text(supply / "status")
                    if capacity is not None:
                        capacities.append(min(100.0, max(0.0, float(capacity))))
                    if status is not None:
                        statuses.append(status)
                elif kind is not None:  # Mains, USB, USB_C, USB_PD, Wireless...
                    online = _read_text(supply / "online")
                    if online is not None:
                        external.append(int(online) != 0)
            except (OSError, ValueError) as exc:
                self.health.failed(sensor, exc)
                continue
            self.health.ok(sensor)
        # Two batteries (some laptops) drain one after the other; their mean is the
        # closest cheap stand-in for "how much energy is left".
        percent = sum(capacities) / len(capacities) if capacities else None
        if any(external):
            on_ac: bool | None = True
        elif external:
            on_ac = False
        elif statuses:
            # No mains supply node (common on SBCs with a HAT battery): infer from
            # the battery; "Not charging" means plugged in but held (charge limit).
            if any(s in ("Charging", "Full", "Not charging") for s in statuses):
                on_ac = True
            elif any(s == "Discharging" for s in statuses):
                on_ac = False
            else:
                on_ac = None
        else:
            on_ac = None
        return percent, on_ac

    def _temperature(self) -> float | None:
        base = self.root / "class" / "thermal"
        temps: list[tuple[str, float]] = []
        try:
            zones = sorted(base.glob("thermal_zone*")) if base.is_dir() else []
        except OSError as exc:
            self.health.failed("thermal", exc)
            return None
        for zone in zones:
            sensor = f"thermal/{zone.name}"
            try:
                raw = _read_text(zone / "temp")
                if raw is None:
                    continue
                kind = _read_text(zone / "type") or zone.name
                temps.append((kind, int(raw) / 1000.0))  # millidegrees Celsius
            except (OSError, ValueError) as exc:
                # e.g. EIO/ENODATA from a zone whose driver is not ready, or a disabled zone.
                self.health.failed(sensor, exc)
                continue
            self.health.ok(sensor)
        return _hottest(temps, self.zones)

    def _throttled(self) -> dict[str, bool] | None:
        raw = _read_text(self.root / PI_THROTTLED_PATH)
        if raw is None:  # not a Raspberry Pi (or an old kernel): unknown
            return None
        return decode_throttled(parse_throttled_text(raw))

    def _load(self) -> tuple[float, float, float] | None:
        raw = _read_text(self.proc_root / "loadavg")
        if raw is None:
            return None
        one, five, fifteen = (float(x) for x in raw.split()[:3])
        return one, five, fifteen

    def _cpu(self) -> float | None:
        raw = _read_text(self.proc_root / "stat")
        if raw is None:
            return None
        line = raw.splitlines()[0].split()
        if line[0] != "cpu":
            raise ValueError(f"unexpected first line of /proc/stat: {line[0]!r}")
        jiffies = [int(x) for x in line[1:]]
        # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
        # already counted in user/nice, so only the first eight add up to the total.
        total = sum(jiffies[:8])
        idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0)
        busy = total - idle
        previous, self._last_cpu = self._last_cpu, (busy, total)
        if previous is None or total <= previous[1]:
            return None  # the first sample (or a counter reset) has no interval to measure
        return round(100.0 * (busy - previous[0]) / (total - previous[1]), 1)


# -- file --------------------------------------------------------------------------------------


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _throttled_value(value: Any) -> dict[str, bool]:
    if isinstance(value, bool):
        return {"throttled": value}
    if isinstance(value, int):
        return decode_throttled(value)
    if isinstance(value, str):
        return decode_throttled(parse_throttled_text(value))
    if isinstance(value, Mapping):
        return {str(k): _flag(v) for k, v in value.items()}
    raise ValueError(f"expected a bool, a bit mask or an object of flags, got {value!r}")


def _load_value(value: Any) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), float(value), float(value)
    if isinstance(value, list) and len(value) == 3:
        one, five, fifteen = (_num(v) for v in value)
        return one, five, fifteen
    raise ValueError(f"expected a number or a list of three numbers, got {value!r}")


_FILE_KEYS: dict[str, Callable[[Any], Any]] = {
    "battery_percent": _num,
    "on_ac": _flag,
    "cpu_percent": _num,
    "load_avg": _load_value,
    "temperature_c": _num,
    "throttled": _throttled_value,
}


class FileSource:
    """Readings from a JSON file that another program keeps up to date.

    Writers should replace the file atomically (write a temporary file, then
    ``rename``); a half-written file fails to parse and reads as all-unknown
    for that sample.  Unknown keys are ignored so writers can add fields.
    """

    name = "file"

    def __init__(self, path: str | os.PathLike[str], clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.clock = clock or Clock()
        self.health = _Health(self.name)

    def read(self) -> Reading:
        """One sample; never raises (see the module docstring)."""
        values: dict[str, Any] = {}
        data = self.health.run(str(self.path), self._load)
        if isinstance(data, dict):
            for key, convert in _FILE_KEYS.items():
                raw = data.get(key)
                if raw is None:  # absent or null: unknown, and not an error
                    self.health.ok(key)
                    continue
                values[key] = self.health.run(key, lambda raw=raw, convert=convert: convert(raw))
        return Reading(**values, source=self.name, taken_at=self.clock.monotonic())

    def _load(self) -> dict[str, Any]:
        # The operator pointed us at this file, so a missing one is a failure worth a log line.
        data = json.loads(self.path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return data


# -- factory -----------------------------------------------------------------------------------


def make_source(kind: str, sysfs_root: str | os.PathLike[str] = "/sys", file: str | os.PathLike[str] = "",
                clock: Clock | None = None, thermal_zones: Iterable[str] = ()) -> Source:
    """Build the source named by ``[power] source``.

    Raises :class:`SensorConfigError` for an unknown ``kind`` or ``kind="file"``
    without a ``file`` path (``PowerConfig.from_dict`` already rejects both, so
    this only fires for callers that skip the config).
    """
    if kind == "psutil":
        return PsutilSource(clock=clock, thermal_zones=thermal_zones, sysfs_root=sysfs_root)
    if kind == "sysfs":
        return SysfsSource(sysfs_root, clock=clock, thermal_zones=thermal_zones)
    if kind == "file":
        if not file:
            raise SensorConfigError("power.file: required when power.source = 'file'")
        return FileSource(file, clock=clock)
    raise SensorConfigError(f"power.source: unknown sensor source {kind!r} (known: psutil, sysfs, file)")


__all__ = [
    "BOOL_FIELDS", "CURRENT_FLAGS", "FileSource", "NUMERIC_FIELDS", "PsutilSource", "Reading", "SensorConfigError",
    "Source", "SysfsSource", "THROTTLE_BITS", "decode_throttled", "make_source", "parse_throttled_text",
]
