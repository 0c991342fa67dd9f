"""Sensor sources against fake sysfs trees, fake psutil functions and JSON files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from edged.power.sensors import (
    FileSource,
    PsutilSource,
    Reading,
    SensorConfigError,
    SysfsSource,
    decode_throttled,
    make_source,
    parse_throttled_text,
)
from edged.seams import FakeClock


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def supply(root: Path, name: str, **files: str) -> Path:
    for key, value in files.items():
        write(root / "class/power_supply" / name / key, value)
    return root / "class/power_supply" / name


def zone(root: Path, n: int, kind: str, millideg: str) -> Path:
    write(root / f"class/thermal/thermal_zone{n}/type", kind)
    write(root / f"class/thermal/thermal_zone{n}/temp", millideg)
    return root / f"class/thermal/thermal_zone{n}"


def power_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "edged.power"]


# -- Reading -----------------------------------------------------------------------------------


def test_reading_values_for_rules() -> None:
    r = Reading(battery_percent=40.0, on_ac=False, load_avg=(1.5, 1.0, 0.5),
                throttled={"under_voltage": False, "soft_temp_limit": True})
    assert r.value("battery_percent") == 40.0
    assert r.value("load_avg") == 1.5
    assert r.value("on_ac") is False
    assert r.value("throttled") is True
    assert r.value("soft_temp_limit") is True
    assert r.value("freq_capped") is None  # not reported by this source: unknown, not False
    assert r.value("temperature_c") is None
    assert Reading().value("throttled") is None
    with pytest.raises(KeyError):
        r.value("voltage")
    assert json.dumps(r.to_dict())


def test_decode_throttled_bits() -> None:
    flags = decode_throttled(0x50005)
    assert flags["under_voltage"] and flags["throttled"]
    assert not flags["freq_capped"] and not flags["soft_temp_limit"]
    assert flags["under_voltage_occurred"] and flags["throttled_occurred"]
    assert not flags["soft_temp_limit_occurred"]
    assert parse_throttled_text("throttled=0x8\n") == 8
    assert parse_throttled_text("50005") == 0x50005


# -- sysfs -------------------------------------------------------------------------------------


def test_sysfs_full_tree(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    supply(root, "BAT0", type="Battery", status="Discharging", capacity="42")
    supply(root, "AC", type="Mains", online="0")
    supply(root, "hidpp_battery_0", type="Battery", scope="Device", capacity="5", status="Discharging")
    zone(root, 0, "cpu-thermal", "51234")
    zone(root, 1, "gpu-thermal", "47000")
    zone(root, 2, "bogus", "-273150")  # an unplugged probe: ignored, not the "hottest"
    write(root / "devices/platform/soc/soc:firmware/get_throttled", "0x4")
    write(tmp_path / "proc/loadavg", "0.50 0.25 0.10 1/123 4567")
    clock = FakeClock()
    r = SysfsSource(root, clock=clock).read()
    assert r.battery_percent == 42.0  # the mouse battery (scope=Device) is not ours
    assert r.on_ac is False
    assert r.temperature_c == pytest.approx(51.234)
    assert r.throttled is not None and r.throttled["throttled"] and not r.throttled["under_voltage"]
    assert r.value("throttled") is True
    assert r.load_avg == (0.5, 0.25, 0.1)
    assert r.source == "sysfs" and r.taken_at == 1000.0


def test_sysfs_mains_online_and_usb(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    supply(root, "BAT0", type="Battery", status="Charging", capacity="80")
    supply(root, "ucsi-source-psy-USBC000:001", type="USB", online="0")
    supply(root, "AC", type="Mains", online="1")
    assert SysfsSource(root, clock=FakeClock()).read().on_ac is True


def test_sysfs_on_ac_from_battery_status_without_mains_node(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    bat = supply(root, "battery", type="Battery", status="Charging", capacity="99")
    src = SysfsSource(root, clock=FakeClock())
    assert src.read().on_ac is True
    write(bat / "status", "Discharging")
    assert src.read().on_ac is False
    write(bat / "status", "Unknown")
    assert src.read().on_ac is None


def test_sysfs_two_batteries_average(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    supply(root, "BAT0", type="Battery", status="Discharging", capacity="20")
    supply(root, "BAT1", type="Battery", status="Discharging", capacity="60")
    assert SysfsSource(root, clock=FakeClock()).read().battery_percent == 40.0


def test_sysfs_thermal_zone_filter(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    zone(root, 0, "x86_pkg_temp", "60000")
    zone(root, 1, "iwlwifi_1", "70000")
    assert SysfsSource(root, clock=FakeClock()).read().temperature_c == 70.0
    assert SysfsSource(root, clock=FakeClock(), thermal_zones=["x86_pkg"]).read().temperature_c == 60.0


def test_sysfs_empty_tree_is_all_unknown_and_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "edged.power")
    r = SysfsSource(tmp_path / "sys", clock=FakeClock()).read()
    assert (r.battery_percent, r.on_ac, r.temperature_c, r.throttled, r.cpu_percent, r.load_avg) == (None,) * 6
    assert power_records(caplog) == []  # absent sensors are not failures


def test_sysfs_cpu_percent_from_proc_stat(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    stat = tmp_path / "proc/stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    write(stat, "cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 1 2 3 4")
    src = SysfsSource(root, clock=FakeClock())
    assert src.read().cpu_percent is None  # no interval yet
    write(stat, "cpu  130 0 120 740 110 0 0 0 60 0\ncpu0 1 2 3 4")  # +50 busy, +50 idle/iowait
    assert src.read().cpu_percent == 50.0


def test_sysfs_broken_sensor_logged_once_then_recovered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edged.power")
    root = tmp_path / "sys"
    z = zone(root, 0, "cpu-thermal", "garbage")
    zone(root, 1, "gpu-thermal", "45000")
    src = SysfsSource(root, clock=FakeClock())
    for _ in range(10):
        assert src.read().temperature_c == 45.0  # the healthy zone still counts
    warnings = [r for r in power_records(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "thermal_zone0" in warnings[0].getMessage()
    write(z / "temp", "61000")
    for _ in range(3):
        assert src.read().temperature_c == 61.0
    infos = [r for r in power_records(caplog) if r.levelno == logging.INFO]
    assert len(infos) == 1 and "recovered" in infos[0].getMessage()
    assert len([r for r in power_records(caplog) if r.levelno == logging.WARNING]) == 1


def test_sysfs_unreadable_file_is_unknown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edged.power")
    root = tmp_path / "sys"
    bat = supply(root, "BAT0", type="Battery", status="Discharging")
    (bat / "capacity").mkdir()  # reading a directory raises IsADirectoryError, like EIO from a flaky driver
    write(root / "devices/platform/soc/soc:firmware/get_throttled", "not-hex")
    src = SysfsSource(root, clock=FakeClock())
    r1, r2 = src.read(), src.read()
    assert r1.battery_percent is None and r2.throttled is None
    assert len(power_records(caplog)) == 2  # one per failing sensor, not per sample


# -- psutil ------------------------------------------------------------------------------------


def fake_psutil(battery=None, temps=None, cpu=12.5, load=(0.1, 0.2, 0.3), **overrides):
    ns = SimpleNamespace(
        sensors_battery=lambda: battery,
        sensors_temperatures=lambda: temps if temps is not None else {},
        cpu_percent=lambda interval=None: cpu,
        getloadavg=lambda: load,
    )
    for k, v in overrides.items():
        setattr(ns, k, v)
    return ns


def shwtemp(label: str, current: float):
    return SimpleNamespace(label=label, current=current, high=None, critical=None)


def test_psutil_reading(tmp_path: Path) -> None:
    ps = fake_psutil(battery=SimpleNamespace(percent=28.5, secsleft=3600, power_plugged=False),
                     temps={"coretemp": [shwtemp("Package", 66.0), shwtemp("Core 0", 64.0)],
                            "nvme": [shwtemp("Composite", 41.0)], "bogus": [shwtemp("", 0.0 - 273.0)]})
    src = PsutilSource(ps, clock=FakeClock(), sysfs_root=tmp_path)  # not a Pi: no get_throttled
    first = src.read()
    assert first.cpu_percent is None  # psutil's first interval=None call is meaningless
    r = src.read()
    assert (r.battery_percent, r.on_ac, r.temperature_c, r.cpu_percent) == (28.5, False, 66.0, 12.5)
    assert r.load_avg == (0.1, 0.2, 0.3) and r.throttled is None and r.source == "psutil"


def test_psutil_source_reads_the_pi_throttle_flags_from_sysfs(tmp_path: Path) -> None:
    # psutil has no throttling API; on a Pi the default source must still see it,
    # or the shipped rule "throttled -> critical" could never fire.
    flags = tmp_path / "devices/platform/soc/soc:firmware/get_throttled"
    flags.parent.mkdir(parents=True)
    flags.write_text("50005\n")  # under-voltage and throttled now (and since boot)
    src = PsutilSource(fake_psutil(), clock=FakeClock(), sysfs_root=tmp_path)
    r = src.read()
    assert r.is_throttled is True and r.throttled["under_voltage"] is True
    flags.write_text("50000\n")  # only the "since boot" bits: not throttled now
    assert src.read().is_throttled is False


def test_psutil_missing_sensors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "edged.power")
    ps = SimpleNamespace(cpu_percent=lambda interval=None: 5.0)  # e.g. macOS without sensors_temperatures
    src = PsutilSource(ps, clock=FakeClock())
    src.read()
    r = src.read()
    assert (r.battery_percent, r.on_ac, r.temperature_c, r.load_avg) == (None, None, None, None)
    assert r.cpu_percent == 5.0
    assert power_records(caplog) == []


def test_psutil_failing_sensor_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edged.power")
    state = {"broken": True}

    def battery():
        if state["broken"]:
            raise OSError(5, "Input/output error")
        return SimpleNamespace(percent=77, power_plugged=None)

    src = PsutilSource(fake_psutil(sensors_battery=battery), clock=FakeClock())
    for _ in range(5):
        assert src.read().battery_percent is None
    assert [r.levelno for r in power_records(caplog)] == [logging.WARNING]
    state["broken"] = False
    r = src.read()
    assert r.battery_percent == 77.0 and r.on_ac is None
    assert [r.levelno for r in power_records(caplog)] == [logging.WARNING, logging.INFO]


# -- file --------------------------------------------------------------------------------------


def test_file_source(tmp_path: Path) -> None:
    path = tmp_path / "power.json"
    path.write_text(json.dumps({"battery_percent": 42, "on_ac": False, "temperature_c": 51.0,
                                "cpu_percent": 3.5, "load_avg": [1, 2, 3], "throttled": "0x50000",
                                "future_field": 1}))
    r = FileSource(path, clock=FakeClock()).read()
    assert (r.battery_percent, r.on_ac, r.temperature_c, r.cpu_percent) == (42.0, False, 51.0, 3.5)
    assert r.load_avg == (1.0, 2.0, 3.0)
    assert r.value("throttled") is False and r.throttled is not None and r.throttled["under_voltage_occurred"]


def test_file_source_missing_keys_are_unknown(tmp_path: Path) -> None:
    path = tmp_path / "power.json"
    path.write_text(json.dumps({"throttled": True, "on_ac": None}))
    r = FileSource(path, clock=FakeClock()).read()
    assert r.value("throttled") is True
    assert (r.battery_percent, r.on_ac, r.temperature_c, r.cpu_percent, r.load_avg) == (None,) * 5


def test_file_source_broken_file_and_values(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edged.power")
    path = tmp_path / "power.json"
    src = FileSource(path, clock=FakeClock())
    assert src.read().battery_percent is None  # missing file
    path.write_text("{half written")
    assert src.read().battery_percent is None  # still failing: no second warning
    assert [r.levelno for r in power_records(caplog)] == [logging.WARNING]
    path.write_text(json.dumps({"battery_percent": "lots", "on_ac": True}))
    r = src.read()
    assert r.battery_percent is None and r.on_ac is True
    src.read()
    levels = [r.levelno for r in power_records(caplog)]
    assert levels == [logging.WARNING, logging.INFO, logging.WARNING]  # file recovered; battery_percent bad once


def test_make_source(tmp_path: Path) -> None:
    assert isinstance(make_source("sysfs", tmp_path), SysfsSource)
    assert isinstance(make_source("file", file=tmp_path / "x.json"), FileSource)
    assert make_source("psutil").name == "psutil"
    with pytest.raises(SensorConfigError, match="power.file"):
        make_source("file")
    with pytest.raises(SensorConfigError, match="'acpi'"):
        make_source("acpi")
