"""Typed, validated configuration for the ``[power]`` section, and the rule language.

API
---
``PowerConfig.from_dict(d) -> PowerConfig``
    Validates the raw ``[power]`` table (``{}`` = all defaults).  Raises
    :class:`PowerConfigError` naming the full key (``power.profiles.powersave.duty_cycle``),
    the bad value and what was expected; unknown keys are errors, so a typo never
    silently does nothing.
``Profile``
    One profile's limits (see the table below); ``severity`` orders them.
``Rule`` / ``Condition``
    A parsed ``[[power.rules]]`` entry; ``Condition.match(reading, margins)``
    returns a human explanation when it holds, else None.
``parse_condition(text) -> Condition``
    Raises :class:`ConditionError` (a ValueError) for anything outside the language.

Example::

    [power]
    enabled = true              # false: no sampling; the daemon stays in default_profile
    source = "sysfs"            # psutil | sysfs | file
    sysfs_root = "/sys"
    file = ""                   # the JSON file for source = "file"
    interval_s = 5.0            # sampling period
    min_dwell_s = 30.0          # least time in a profile before relaxing to a less severe one
    default_profile = "performance"   # when no rule matches
    thermal_zones = []          # zone-name prefixes counted for temperature_c; [] = all
    hysteresis = { battery_percent = 5, temperature_c = 5 }

    [power.profiles.powersave]  # merged key by key over the shipped defaults
    max_rps = 5.0               # or "unlimited"
    duty_cycle = 0.4

    [[power.rules]]             # if given, replaces the shipped rules entirely
    when = "battery_percent < 30"
    profile = "powersave"

Profiles
--------
Exactly four, ordered by severity: ``performance < balanced < powersave < critical``.
Custom profile names are rejected: the policy needs a total order of severity,
and four levels are what the rules and the governor are tuned for.  Each has:

* ``max_rps`` - token-bucket rate (burst = max(1, rate)); ``"unlimited"`` = no bucket.
* ``max_concurrency`` - workers running inference at once; ``"default"`` = all workers.
* ``num_threads`` - interpreter threads; ``"default"`` = ``runtime.num_threads``.
* ``duty_cycle`` - 0 < x <= 1, the share of each worker's wall time spent in inference.
* ``queue_size`` - governor's queue limit; ``"default"`` = ``server.queue_size``.
* ``min_priority`` - lowest request priority still served (``low|normal|high``).
* ``variant`` - ``full`` or ``lite`` (``model_lite.tflite`` when a version has one).
* ``allow_updates`` - whether automatic model swaps may run in this profile.

TOML has no null, so "no limit" / "use the server's value" is spelled with the
strings above; Python callers may also pass ``None``.

Rule language
-------------
No ``eval``: a condition is parsed into data once, at config load::

    condition   := conjunction ( "or" conjunction )*
    conjunction := term ( "and" term )*
    term        := [ "not" ] BOOL_FIELD  |  NUMERIC_FIELD ( "<" | "<=" | ">" | ">=" ) NUMBER

``and`` binds tighter than ``or``; there are no parentheses.  Numeric fields:
``battery_percent``, ``cpu_percent``, ``temperature_c``, ``load_avg`` (1-minute).
Boolean fields: ``on_ac``, ``throttled`` (any current throttle flag),
``under_voltage``, ``freq_capped``, ``soft_temp_limit``.  A term whose field is
unknown (None) is false - including ``not on_ac`` - so a missing sensor never
triggers a rule.

Of all rules that match, the one naming the *most severe* profile wins (ties:
the first such rule).  Severity rather than first-match order is deliberate:
rules are then independent statements ("below 10 % is critical", "on AC is
performance") whose order in the file cannot accidentally let a hot, throttled
device run flat out because an ``on_ac`` rule happened to come first.  The
shipped rules are :data:`DEFAULT_RULES`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from edged.power.sensors import BOOL_FIELDS, NUMERIC_FIELDS

Priority = Literal["low", "normal", "high"]
Variant = Literal["full", "lite"]
SourceKind = Literal["psutil", "sysfs", "file"]

#: Profiles from least to most severe; the index is the severity.
PROFILE_ORDER: tuple[str, ...] = ("performance", "balanced", "powersave", "critical")
PRIORITY_RANK: dict[str, int] = {"low": 0, "normal": 1, "high": 2}
VARIANTS = ("full", "lite")
SOURCES = ("psutil", "sysfs", "file")
OPERATORS = ("<", "<=", ">", ">=")


class PowerConfigError(ValueError):
    """A ``[power]`` value is invalid; ``key``, ``value`` and ``reason`` say which and why.

    Fix the named key in the config file; the message is meant to be shown as is.
    """

    def __init__(self, key: str, value: Any, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"{key} = {value!r}: {reason}")


class ConditionError(ValueError):
    """A rule condition is outside the rule language; the message says where."""


# -- the rule language -------------------------------------------------------------------------


class _HasValue(Protocol):
    def value(self, name: str) -> float | bool | None: ...


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Compare:
    """``field op threshold``; false when the field is unknown."""

    field: str
    op: str
    threshold: float

    def explain(self, reading: _HasValue, margin: float = 0.0) -> str | None:
        """The explanation if the term holds with the threshold widened by ``margin``, else None.

        Widening moves the threshold in the direction that makes the term easier
        to satisfy (``< 30`` with margin 5 becomes ``< 35``; ``>= 80`` becomes
        ``>= 75``): that is how hysteresis keeps a profile until the reading
        clears the threshold by the margin.
        """
        value = reading.value(self.field)
        if value is None or isinstance(value, bool):
            return None
        value = float(value)
        limit = self.threshold + margin if self.op in ("<", "<=") else self.threshold - margin
        holds = {"<": value < limit, "<=": value <= limit, ">": value > limit, ">=": value >= limit}[self.op]
        if not holds:
            return None
        text = f"{self.field} {_fmt(value)} {self.op} {_fmt(limit)}"
        if margin:
            text += f" (hysteresis: {_fmt(self.threshold)} {'+' if self.op in ('<', '<=') else '-'} {_fmt(margin)})"
        return text

    def __str__(self) -> str:
        return f"{self.field} {self.op} {_fmt(self.threshold)}"


@dataclass(frozen=True)
class Flag:
    """A bare boolean field, optionally negated; false when the field is unknown."""

    field: str
    negated: bool = False

    def explain(self, reading: _HasValue, margin: float = 0.0) -> str | None:
        value = reading.value(self.field)
        if value is None:
            return None
        return str(self) if bool(value) != self.negated else None

    def __str__(self) -> str:
        return f"not {self.field}" if self.negated else self.field


Term = Compare | Flag


@dataclass(frozen=True)
class Condition:
    """A parsed condition: an ``or`` of ``and`` groups of terms."""

    text: str
    any_of: tuple[tuple[Term, ...], ...]

    def match(self, reading: _HasValue, margins: Mapping[str, float] | None = None) -> str | None:
        """Why the condition holds for ``reading`` (with thresholds widened by ``margins``), or None."""
        for group in self.any_of:
            parts = []
            for term in group:
                why = term.explain(reading, (margins or {}).get(term.field, 0.0))
                if why is None:
                    break
                parts.append(why)
            else:
                return " and ".join(parts)
        return None

    def fields(self) -> set[str]:
        return {term.field for group in self.any_of for term in group}


_TOKEN = re.compile(r"\s*(?:(<=|>=|<|>)|([A-Za-z_][A-Za-z0-9_]*)|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(\S))")


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m is not None  # the last alternative matches any non-space character
        op, word, number, other = m.groups()
        if other is not None:
            raise ConditionError(f"unexpected {other!r} at position {m.start(4)}")
        out.append(("op", op) if op else ("word", word) if word else ("number", number))
        pos = m.end()
    return out


def parse_condition(text: str) -> Condition:
    """Parse ``text`` in the rule language; raises :class:`ConditionError` saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("empty condition")
    tokens = _tokens(text)
    groups: list[tuple[Term, ...]] = []
    terms: list[Term] = []
    i = 0

    def expect_term() -> None:
        nonlocal i
        negated = False
        if i < len(tokens) and tokens[i] == ("word", "not"):
            negated = True
            i += 1
        if i >= len(tokens) or tokens[i][0] != "word" or tokens[i][1] in ("and", "or", "not"):
            got = tokens[i][1] if i < len(tokens) else "end of condition"
            raise ConditionError(f"expected a field name, got {got!r}")
        name = tokens[i][1]
        i += 1
        if name in BOOL_FIELDS:
            terms.append(Flag(name, negated))
            return
        if name not in NUMERIC_FIELDS:
            known = ", ".join(sorted(NUMERIC_FIELDS | BOOL_FIELDS))
            raise ConditionError(f"unknown field {name!r} (known: {known})")
        if negated:
            raise ConditionError(f"'not' applies to boolean fields only, not {name!r}")
        if i >= len(tokens) or tokens[i][0] != "op":
            raise ConditionError(f"{name!r} is a number: expected one of {' '.join(OPERATORS)} after it")
        op = tokens[i][1]
        i += 1
        if i >= len(tokens) or tokens[i][0] != "number":
            raise ConditionError(f"expected a number after '{name} {op}'")
        threshold = float(tokens[i][1])
        if not math.isfinite(threshold):
            raise ConditionError(f"threshold must be finite, got {tokens[i][1]!r}")
        i += 1
        terms.append(Compare(name, op, threshold))

    expect_term()
    while i < len(tokens):
        tok = tokens[i]
        if tok == ("word", "and"):
            i += 1
            expect_term()
        elif tok == ("word", "or"):
            i += 1
            groups.append(tuple(terms))
            terms = []
            expect_term()
        else:
            raise ConditionError(f"expected 'and', 'or' or the end, got {tok[1]!r}")
    groups.append(tuple(terms))
    return Condition(text.strip(), tuple(groups))


@dataclass(frozen=True)
class Rule:
    """``[[power.rules]]`` entry number ``index`` (1-based, as shown in reasons)."""

    index: int
    when: Condition
    profile: str

    def to_dict(self) -> dict[str, Any]:
        return {"when": self.when.text, "profile": self.profile}


# -- profiles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """Limits the governor and the runtime apply while this profile is in effect."""

    name: str
    max_rps: float | None = None
    max_concurrency: int | None = None
    num_threads: int | None = None
    duty_cycle: float = 1.0
    queue_size: int | None = None
    min_priority: Priority = "low"
    variant: Variant = "full"
    allow_updates: bool = True

    @property
    def severity(self) -> int:
        return PROFILE_ORDER.index(self.name)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _PROFILE_KEYS} | {"name": self.name}


_PROFILE_KEYS = ("max_rps", "max_concurrency", "num_threads", "duty_cycle", "queue_size", "min_priority",
                 "variant", "allow_updates")

#: The shipped profiles; ``[power.profiles.<name>]`` overrides them key by key.
DEFAULT_PROFILES: dict[str, Profile] = {
    "performance": Profile("performance"),
    "balanced": Profile("balanced", duty_cycle=0.8),
    "powersave": Profile("powersave", max_rps=10.0, max_concurrency=1, num_threads=1, duty_cycle=0.5,
                         queue_size=16, min_priority="normal", variant="lite"),
    "critical": Profile("critical", max_rps=2.0, max_concurrency=1, num_threads=1, duty_cycle=0.25,
                        queue_size=4, min_priority="normal", variant="lite", allow_updates=False),
}

#: The shipped rules, used when ``[[power.rules]]`` is absent.
DEFAULT_RULES: tuple[dict[str, str], ...] = (
    {"when": "on_ac", "profile": "performance"},
    {"when": "not on_ac", "profile": "balanced"},
    {"when": "battery_percent < 30", "profile": "powersave"},
    {"when": "battery_percent < 10 or temperature_c >= 80 or throttled", "profile": "critical"},
)

#: Shipped hysteresis margins per numeric field; ``hysteresis = {...}`` overrides them per field.
DEFAULT_HYSTERESIS: dict[str, float] = {"battery_percent": 5.0, "temperature_c": 5.0, "cpu_percent": 10.0,
                                       "load_avg": 0.5}


# -- the section -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerConfig:
    """The validated ``[power]`` section; build it with :meth:`from_dict`."""

    enabled: bool = True
    source: SourceKind = "psutil"
    sysfs_root: str = "/sys"
    file: str = ""
    interval_s: float = 5.0
    min_dwell_s: float = 30.0
    default_profile: str = "performance"
    thermal_zones: tuple[str, ...] = ()
    hysteresis: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_HYSTERESIS))
    profiles: Mapping[str, Profile] = field(default_factory=lambda: dict(DEFAULT_PROFILES))
    rules: tuple[Rule, ...] = field(default_factory=lambda: tuple(_rule(i, r) for i, r in enumerate(DEFAULT_RULES, 1)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PowerConfig:
        """Validate the raw ``[power]`` table; raises :class:`PowerConfigError` on the first bad key."""
        d = dict(d or {})
        known = {"enabled", "source", "sysfs_root", "file", "interval_s", "min_dwell_s", "default_profile",
                 "thermal_zones", "hysteresis", "profiles", "rules"}
        for key in d:
            if key not in known:
                raise PowerConfigError(f"power.{key}", d[key], f"unknown key (known: {', '.join(sorted(known))})")
        enabled = _bool("power.enabled", d.get("enabled", True))
        source = _choice("power.source", d.get("source", "psutil"), SOURCES)
        sysfs_root = _str("power.sysfs_root", d.get("sysfs_root", "/sys"))
        if not sysfs_root:
            raise PowerConfigError("power.sysfs_root", sysfs_root, "must not be empty")
        file = _str("power.file", d.get("file", ""))
        if source == "file" and not file:
            raise PowerConfigError("power.file", file, "required when power.source = 'file'")
        interval_s = _number("power.interval_s", d.get("interval_s", 5.0))
        if interval_s <= 0:
            raise PowerConfigError("power.interval_s", interval_s, "must be > 0")
        min_dwell_s = _number("power.min_dwell_s", d.get("min_dwell_s", 30.0))
        if min_dwell_s < 0:
            raise PowerConfigError("power.min_dwell_s", min_dwell_s, "must be >= 0")
        zones = d.get("thermal_zones", [])
        if not isinstance(zones, (list, tuple)) or not all(isinstance(z, str) and z for z in zones):
            raise PowerConfigError("power.thermal_zones", zones, "must be a list of non-empty zone-name prefixes")

        hysteresis = dict(DEFAULT_HYSTERESIS)
        raw_h = d.get("hysteresis", {})
        if not isinstance(raw_h, Mapping):
            raise PowerConfigError("power.hysteresis", raw_h, "must be a table of field = margin")
        for name, margin in raw_h.items():
            key = f"power.hysteresis.{name}"
            if name not in NUMERIC_FIELDS:
                raise PowerConfigError(key, margin, f"not a numeric field (known: {', '.join(sorted(NUMERIC_FIELDS))})")
            margin = _number(key, margin)
            if margin < 0:
                raise PowerConfigError(key, margin, "must be >= 0")
            hysteresis[name] = margin

        profiles = dict(DEFAULT_PROFILES)
        raw_p = d.get("profiles", {})
        if not isinstance(raw_p, Mapping):
            raise PowerConfigError("power.profiles", raw_p, "must be a table of profiles")
        for name, over in raw_p.items():
            profiles[name] = _profile(name, over)

        default_profile = _choice("power.default_profile", d.get("default_profile", "performance"), PROFILE_ORDER)

        raw_rules = d.get("rules", DEFAULT_RULES)
        if not isinstance(raw_rules, (list, tuple)):
            raise PowerConfigError("power.rules", raw_rules, "must be an array of tables ([[power.rules]])")
        rules = tuple(_rule(i, raw) for i, raw in enumerate(raw_rules, start=1))

        return cls(enabled=enabled, source=source, sysfs_root=sysfs_root, file=file,  # type: ignore[arg-type]
                   interval_s=interval_s, min_dwell_s=min_dwell_s, default_profile=default_profile,
                   thermal_zones=tuple(zones), hysteresis=hysteresis, profiles=profiles, rules=rules)

    @classmethod
    def defaults(cls) -> PowerConfig:
        """The configuration with no ``[power]`` section at all."""
        return cls.from_dict({})

    def profile(self, name: str) -> Profile:
        """The profile called ``name``; raises KeyError for an unknown one."""
        return self.profiles[name]


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PowerConfigError(key, value, "must be true or false")
    return value


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise PowerConfigError(key, value, "must be a string")
    return value


def _number(key: str, value: Any) -> float:
    # bool is an int subclass; `duty_cycle = true` is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PowerConfigError(key, value, "must be a finite number")
    return float(value)


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PowerConfigError(key, value, "must be an integer")
    if value < minimum:
        raise PowerConfigError(key, value, f"must be >= {minimum}")
    return value


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise PowerConfigError(key, value, f"must be one of {', '.join(choices)}")
    return value


def _profile(name: str, over: Any) -> Profile:
    prefix = f"power.profiles.{name}"
    if name not in PROFILE_ORDER:
        raise PowerConfigError(prefix, over, f"unknown profile (known: {', '.join(PROFILE_ORDER)})")
    if not isinstance(over, Mapping):
        raise PowerConfigError(prefix, over, "must be a table")
    changes: dict[str, Any] = {}
    for key, value in over.items():
        full = f"{prefix}.{key}"
        if key == "max_rps":
            if value is None or value == "unlimited":
                changes[key] = None
            else:
                if isinstance(value, str):
                    raise PowerConfigError(full, value, "must be a number > 0 or \"unlimited\"")
                rate = _number(full, value)
                if rate <= 0:
                    raise PowerConfigError(full, value, "must be > 0 (use \"unlimited\" for no limit)")
                changes[key] = rate
        elif key in ("max_concurrency", "num_threads", "queue_size"):
            if value is None or value == "default":
                changes[key] = None
            else:
                if isinstance(value, str):
                    raise PowerConfigError(full, value, "must be an integer >= 1 or \"default\"")
                changes[key] = _int(full, value, 1)
        elif key == "duty_cycle":
            duty = _number(full, value)
            if not 0 < duty <= 1:
                raise PowerConfigError(full, value, "must be in (0, 1]: the share of wall time spent in inference")
            changes[key] = duty
        elif key == "min_priority":
            changes[key] = _choice(full, value, tuple(PRIORITY_RANK))
        elif key == "variant":
            changes[key] = _choice(full, value, VARIANTS)
        elif key == "allow_updates":
            changes[key] = _bool(full, value)
        else:
            raise PowerConfigError(full, value, f"unknown key (known: {', '.join(_PROFILE_KEYS)})")
    return replace(DEFAULT_PROFILES[name], **changes)


def _rule(index: int, raw: Any) -> Rule:
    prefix = f"power.rules[{index}]"
    if not isinstance(raw, Mapping):
        raise PowerConfigError(prefix, raw, "must be a table with 'when' and 'profile'")
    for key in raw:
        if key not in ("when", "profile"):
            raise PowerConfigError(f"{prefix}.{key}", raw[key], "unknown key (known: profile, when)")
    for key in ("when", "profile"):
        if key not in raw:
            raise PowerConfigError(f"{prefix}.{key}", None, "required")
    profile = _choice(f"{prefix}.profile", raw["profile"], PROFILE_ORDER)
    try:
        when = parse_condition(raw["when"])
    except ConditionError as exc:
        raise PowerConfigError(f"{prefix}.when", raw["when"], str(exc)) from None
    return Rule(index, when, profile)


__all__ = [
    "Compare", "Condition", "ConditionError", "DEFAULT_HYSTERESIS", "DEFAULT_PROFILES", "DEFAULT_RULES", "Flag",
    "PRIORITY_RANK", "PROFILE_ORDER", "PowerConfig", "PowerConfigError", "Profile", "Rule", "parse_condition",
]
