"""[power] config validation and the rule language."""

from __future__ import annotations

import re

import pytest

from edged.power.config import (
    DEFAULT_PROFILES,
    Compare,
    ConditionError,
    Flag,
    PowerConfig,
    PowerConfigError,
    parse_condition,
)
from edged.power.sensors import Reading


def test_defaults() -> None:
    cfg = PowerConfig.from_dict({})
    assert cfg == PowerConfig.from_dict(None) == PowerConfig.defaults()
    assert (cfg.source, cfg.sysfs_root, cfg.interval_s, cfg.min_dwell_s) == ("psutil", "/sys", 5.0, 30.0)
    assert cfg.default_profile == "performance"
    assert list(cfg.profiles) == ["performance", "balanced", "powersave", "critical"]
    assert [p.severity for p in cfg.profiles.values()] == [0, 1, 2, 3]
    assert [r.profile for r in cfg.rules] == ["performance", "balanced", "powersave", "critical"]
    assert cfg.rules[3].when.text == "battery_percent < 10 or temperature_c >= 80 or throttled"
    assert cfg.hysteresis["battery_percent"] == 5.0 and cfg.hysteresis["temperature_c"] == 5.0
    crit = cfg.profile("critical")
    assert (crit.max_rps, crit.max_concurrency, crit.duty_cycle, crit.allow_updates) == (2.0, 1, 0.25, False)


def test_full_section_and_profile_merge() -> None:
    cfg = PowerConfig.from_dict({
        "source": "file", "file": "/run/ups.json", "interval_s": 2, "min_dwell_s": 0,
        "default_profile": "balanced", "thermal_zones": ["cpu"], "hysteresis": {"battery_percent": 3},
        "profiles": {"powersave": {"max_rps": 5, "duty_cycle": 0.4},
                     "performance": {"max_rps": "unlimited", "queue_size": "default", "num_threads": 4}},
        "rules": [{"when": "temperature_c > 70", "profile": "powersave"}],
    })
    assert cfg.file == "/run/ups.json" and cfg.interval_s == 2.0 and cfg.thermal_zones == ("cpu",)
    assert cfg.hysteresis["battery_percent"] == 3.0 and cfg.hysteresis["temperature_c"] == 5.0
    ps = cfg.profile("powersave")
    assert (ps.max_rps, ps.duty_cycle) == (5.0, 0.4)
    # keys not given keep the shipped defaults
    assert (ps.max_concurrency, ps.variant, ps.min_priority) == (1, "lite", "normal")
    assert cfg.profile("performance").num_threads == 4
    assert cfg.profile("critical") == DEFAULT_PROFILES["critical"]
    assert len(cfg.rules) == 1 and cfg.rules[0].index == 1  # rules replace the defaults


@pytest.mark.parametrize("section, key, value", [
    ({"sources": "psutil"}, "power.sources", "psutil"),
    ({"source": "acpi"}, "power.source", "acpi"),
    ({"source": "file"}, "power.file", ""),
    ({"interval_s": 0}, "power.interval_s", 0.0),
    ({"interval_s": "5s"}, "power.interval_s", "5s"),
    ({"min_dwell_s": -1}, "power.min_dwell_s", -1.0),
    ({"enabled": "yes"}, "power.enabled", "yes"),
    ({"default_profile": "turbo"}, "power.default_profile", "turbo"),
    ({"thermal_zones": "cpu"}, "power.thermal_zones", "cpu"),
    ({"hysteresis": {"voltage": 1}}, "power.hysteresis.voltage", 1),
    ({"hysteresis": {"battery_percent": -1}}, "power.hysteresis.battery_percent", -1.0),
    ({"profiles": {"turbo": {}}}, "power.profiles.turbo", {}),
    ({"profiles": {"powersave": {"duty_cycle": 1.5}}}, "power.profiles.powersave.duty_cycle", 1.5),
    ({"profiles": {"powersave": {"duty_cycle": 0}}}, "power.profiles.powersave.duty_cycle", 0),
    ({"profiles": {"powersave": {"duty_cycle": True}}}, "power.profiles.powersave.duty_cycle", True),
    ({"profiles": {"critical": {"max_rps": 0}}}, "power.profiles.critical.max_rps", 0),
    ({"profiles": {"critical": {"max_rps": "fast"}}}, "power.profiles.critical.max_rps", "fast"),
    ({"profiles": {"critical": {"max_concurrency": 0}}}, "power.profiles.critical.max_concurrency", 0),
    ({"profiles": {"critical": {"queue_size": 2.5}}}, "power.profiles.critical.queue_size", 2.5),
    ({"profiles": {"critical": {"min_priority": "urgent"}}}, "power.profiles.critical.min_priority", "urgent"),
    ({"profiles": {"critical": {"variant": "tiny"}}}, "power.profiles.critical.variant", "tiny"),
    ({"profiles": {"critical": {"allow_updates": 1}}}, "power.profiles.critical.allow_updates", 1),
    ({"profiles": {"critical": {"max_rsp": 1}}}, "power.profiles.critical.max_rsp", 1),
    ({"rules": {"when": "on_ac"}}, "power.rules", {"when": "on_ac"}),
    ({"rules": [{"when": "on_ac"}]}, "power.rules[1].profile", None),
    ({"rules": [{"when": "on_ac", "profile": "x"}]}, "power.rules[1].profile", "x"),
    ({"rules": [{"when": "on_ac", "profile": "balanced", "if": 1}]}, "power.rules[1].if", 1),
    ({"rules": [{"when": "on_ac", "profile": "balanced"}, {"when": "batery_percent < 3", "profile": "critical"}]},
     "power.rules[2].when", "batery_percent < 3"),
])
def test_errors_name_key_and_value(section: dict, key: str, value: object) -> None:
    with pytest.raises(PowerConfigError) as info:
        PowerConfig.from_dict(section)
    assert info.value.key == key
    assert info.value.value == value
    assert str(info.value).startswith(f"{key} = {value!r}: ")
    assert isinstance(info.value, ValueError)


def test_rule_error_message_says_what_is_wrong() -> None:
    with pytest.raises(PowerConfigError, match=r"power.rules\[1\].when = 'batery_percent < 3': unknown field"):
        PowerConfig.from_dict({"rules": [{"when": "batery_percent < 3", "profile": "critical"}]})


# -- the rule language -------------------------------------------------------------------------


def test_parse_precedence_and_terms() -> None:
    c = parse_condition("battery_percent < 10 or temperature_c >= 80 and not on_ac or throttled")
    assert c.any_of == (
        (Compare("battery_percent", "<", 10.0),),
        (Compare("temperature_c", ">=", 80.0), Flag("on_ac", negated=True)),
        (Flag("throttled"),),
    )
    assert parse_condition("load_avg>1.5").any_of == ((Compare("load_avg", ">", 1.5),),)
    assert parse_condition("  cpu_percent <= -2e1 ").any_of == ((Compare("cpu_percent", "<=", -20.0),),)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("battery_percent", "expected one of"),
    ("battery_percent < ", "expected a number"),
    ("battery_percent < low", "expected a number"),
    ("battery_percent == 3", "unexpected '='"),
    ("on_ac and", "expected a field name"),
    ("on_ac or or throttled", "expected a field name"),
    ("on_ac throttled", "expected 'and', 'or' or the end"),
    ("not battery_percent < 3", "'not' applies to boolean fields only"),
    ("__import__('os')", "unexpected '('"),
    ("__import__ < 3", "unknown field '__import__'"),
    ("(on_ac)", "unexpected '('"),
    ("battery_percent < 1e999", "finite"),
])
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ConditionError, match=re.escape(message)):
        parse_condition(text)


def test_match_explains_and_unknown_never_matches() -> None:
    c = parse_condition("battery_percent < 30 and not on_ac")
    assert c.match(Reading(battery_percent=28.0, on_ac=False)) == "battery_percent 28 < 30 and not on_ac"
    assert c.match(Reading(battery_percent=28.0, on_ac=True)) is None
    assert c.match(Reading(battery_percent=28.0)) is None  # on_ac unknown: `not on_ac` is not true
    assert c.match(Reading(on_ac=False)) is None
    widened = c.match(Reading(battery_percent=33.0, on_ac=False), {"battery_percent": 5.0})
    assert widened == "battery_percent 33 < 35 (hysteresis: 30 + 5) and not on_ac"
    hot = parse_condition("temperature_c >= 80")
    assert hot.match(Reading(temperature_c=76.0), {"temperature_c": 5.0}) == \
        "temperature_c 76 >= 75 (hysteresis: 80 - 5)"
    assert hot.match(Reading(temperature_c=74.9), {"temperature_c": 5.0}) is None
    assert parse_condition("throttled").match(Reading(throttled={"under_voltage": True})) == "throttled"


def test_edged_config_load_validates_power(tmp_path) -> None:
    """The daemon's loader runs PowerConfig.from_dict, so a bad [power] key fails at load()."""
    from edged.config import load
    from edged.errors import ConfigError

    path = tmp_path / "edged.toml"
    path.write_text('[power]\nsource = "sysfs"\n[power.profiles.powersave]\nduty_cycle = 2.0\n')
    with pytest.raises(ConfigError, match="power.profiles.powersave.duty_cycle"):
        load(path)


def test_dataclass_defaults_match_from_dict() -> None:
    assert PowerConfig() == PowerConfig.defaults()


def test_power_layer_imports_no_server_or_zmq() -> None:
    """edged.power sits below edged.server (docs/architecture.md): importing it must not pull either in."""
    import subprocess
    import sys

    code = "import sys, edged.power; print(sorted(m for m in sys.modules if m == 'zmq' or m.startswith('edged.server')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
