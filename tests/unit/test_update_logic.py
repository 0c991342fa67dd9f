"""The update decisions and strategies as pure logic (no registry, no daemon, no sleeping)."""

from __future__ import annotations

import random

import pytest

from edged.config import UpdateConfig
from edged.update.decide import LocalModel, decide
from edged.update.rollout import bucket
from edged.update.conditions import Situation, default_route_interface, hold_back, in_windows
from edged.update.strategy import Adaptive, Conditional, Context, Health, Off, Periodic, make_strategy


def index(**versions: dict) -> dict:
    base = {"channel": "stable", "rollout": 100, "withdrawn": False, "min_runtime": None, "files": []}
    return {"format": 1, "model": "m", "versions": {v: {**base, **info} for v, info in versions.items()}}


def local(**kw) -> LocalModel:
    kw.setdefault("serving", "v1")
    kw.setdefault("committed", "v1")
    kw.setdefault("present", ["v1"])
    return LocalModel(name="m", **kw)


def run(idx: dict, lm: LocalModel, **kw):
    return decide(idx, lm, device_id=kw.pop("device_id", "d1"), channel=kw.pop("channel", "stable"), **kw)


def test_picks_the_highest_eligible_newer_version() -> None:
    d = run(index(v2={}, v3={}, v4={"channel": "beta"}), local())
    assert (d.action, d.version) == ("download", "v3")
    beta = run(index(v2={}, v3={}, v4={"channel": "beta"}), local(), channel="beta")
    assert (beta.action, beta.version) == ("download", "v4")


def test_never_downgrades_and_skips_what_is_on_disk() -> None:
    assert run(index(v1={}, v2={}), local(serving="v3", committed="v3", present=["v3"])).action == "none"
    d = run(index(v2={}), local(present=["v1", "v2"]))
    assert d.action == "none" and "on disk" in d.reason


def test_failed_min_runtime_and_rollout_are_skipped_with_reasons() -> None:
    d = run(index(v2={}, v3={"min_runtime": {"litert": "99"}}), local(failed={"v2": "validation: bad"}),
            runtime_ok=lambda need: need is None)
    assert d.action == "none"
    skipped = {row["version"]: row["skipped"] for row in d.available}
    assert "failed here" in skipped["v2"] and "runtime" in skipped["v3"]
    zero = run(index(v2={"rollout": 0}), local())
    assert zero.action == "none" and "rollout 0 %" in zero.available[0]["skipped"]


def test_rollout_covers_exactly_the_devices_below_the_percentage() -> None:
    ids = [f"dev-{i}" for i in range(200)]
    for device in ids:
        d = run(index(v2={"rollout": 30}), local(), device_id=device)
        assert (d.action == "download") == (bucket(device, "m", "v2") < 30)


def test_a_withdrawn_serving_version_goes_back_to_the_newest_good_one_below() -> None:
    lm = local(serving="v3", committed="v3", present=["v1", "v2", "v3"], failed={"v2": "rolled back"})
    d = run(index(v1={}, v2={}, v3={"withdrawn": True}), lm)
    assert (d.action, d.version, d.target) == ("withdraw", "v3", "v1")
    probation = local(serving="v3", committed="v2", probation=True, present=["v2", "v3"])
    d = run(index(v2={}, v3={"withdrawn": True}), probation)
    assert (d.action, d.target) == ("withdraw", "v2")


def test_a_withdrawn_version_fetches_an_older_one_when_none_is_on_disk() -> None:
    lm = local(serving="v3", committed="v3", present=["v3"])
    d = run(index(v2={}, v3={"withdrawn": True}), lm)
    assert (d.action, d.version) == ("download", "v2")


def test_withdrawn_versions_only_on_disk_are_marked_bad_and_never_fetched() -> None:
    d = run(index(v2={"withdrawn": True}), local(present=["v1", "v2"]))
    assert d.action == "none" and d.mark_bad == {"v2": "withdrawn by the registry"}
    assert run(index(v2={"withdrawn": True}), local()).action == "none"


def test_strategy_off_waits_for_a_manual_check() -> None:
    s = make_strategy(UpdateConfig())
    assert isinstance(s, Off)
    delay, why = s.next_check(0.0, None)
    assert delay is None and "ctl update check" in why


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5])
def test_periodic_waits_stay_within_the_jitter(jitter: float) -> None:
    s = Periodic(UpdateConfig(strategy="periodic", url="http://r", interval_s=600, jitter=jitter),
                 Context(rng=random.Random(1)))
    first, _ = s.next_check(0.0, None)
    assert first is not None and 600 * jitter <= first <= 600
    waits = [s.next_check(0.0, object())[0] for _ in range(500)]
    assert all(600 * (1 - jitter) <= w <= 600 * (1 + jitter) for w in waits)
    if jitter:
        assert max(waits) - min(waits) > 600 * jitter  # spread, not constant


def test_update_config_is_off_by_default_and_names_bad_keys(tmp_path) -> None:
    from edged import config
    from edged.errors import ConfigError

    assert config.load(None, {}).update.url == ""
    root = tmp_path / "root.json"
    root.write_text("{}")
    ok = config.load(None, {"update.url": "https://r.example", "update.root": str(root),
                            "update.strategy": "periodic"})
    assert ok.update.strategy == "periodic" and ok.update.interval_s == 3600.0
    for key, value, words in (("update.jitter", 1.5, "fraction"), ("update.strategy", "periodic", "needs update.url"),
                              ("update.interval_s", 0, "> 0"), ("update.max_rate_kbps", -1, ">= 0"),
                              ("update.url", "ftp://x", "http"), ("update.strategy", "sometimes", "one of")):
        with pytest.raises(ConfigError) as err:
            config.load(None, {key: value})
        assert key in str(err.value) and words in str(err.value)
    with pytest.raises(ConfigError, match="update.root"):
        config.load(None, {"update.url": "https://r.example", "update.root": str(tmp_path / "missing.json")})


# -- conditional -------------------------------------------------------------------------------

def _found(bytes_: int = 1_000_000):
    d = run(index(v2={}), local())
    d.bytes = bytes_
    return d


class FakeDevice:
    """Fake power readings, disk and local time for the conditional strategy."""

    def __init__(self, **kw) -> None:
        self.s = Situation(**{"allow_updates": True, "profile": "performance", "free_bytes": 10**9, **kw})

    def __call__(self) -> Situation:
        return self.s


def test_pending_while_the_battery_is_low_then_applied_on_ac() -> None:
    device = FakeDevice(battery_percent=15.0, on_ac=False)
    s = Conditional(UpdateConfig(min_battery_percent=30), Context(situation=device))
    ok, why = s.may_download(_found())
    assert not ok and why == "battery 15 % < 30 % and not on AC"
    device.s.on_ac = True
    ok, why = s.may_download(_found())
    assert ok and "on AC" in why


def test_held_outside_the_maintenance_window_then_applied_inside() -> None:
    from datetime import datetime, timedelta

    from edged.seams import FakeClock

    clock = FakeClock(start=0.0, wall_offset=datetime(2026, 12, 1, 23, 30).timestamp())
    device = FakeDevice()
    s = Conditional(UpdateConfig(windows=["02:00-05:00"]), Context(situation=device))
    seen = []
    for _ in range(8):  # 23:30 .. 03:00 local, one look every 30 minutes
        device.s.local_time = datetime.fromtimestamp(clock.time())
        seen.append((device.s.local_time.strftime("%H:%M"), s.may_download(_found())[0]))
        clock.advance(timedelta(minutes=30).total_seconds())
    assert [t for t, ok in seen if ok] == ["02:00", "02:30", "03:00"], seen
    device.s.local_time = datetime(2026, 12, 2, 1, 30)
    assert s.hold(_found()) == "outside the maintenance window 02:00-05:00 (local time 01:30)"
    assert in_windows(["22:00-02:00"], datetime(2026, 1, 1, 1, 0)) and not in_windows(["22:00-02:00"],
                                                                                     datetime(2026, 1, 1, 3, 0))


def test_a_download_is_paused_by_a_profile_change_and_resumed() -> None:
    device = FakeDevice()
    s = Conditional(UpdateConfig(), Context(situation=device))
    found = _found()
    assert s.may_download(found)[0] and s.hold(found) is None
    device.s.allow_updates, device.s.profile = False, "critical"
    assert s.hold(found) == "power profile critical does not allow updates"
    device.s.allow_updates, device.s.profile = True, "performance"
    assert s.hold(found) is None


def test_every_condition_names_its_numbers_and_unknown_readings_never_block(tmp_path) -> None:
    cfg = UpdateConfig(min_battery_percent=50, max_cpu_percent=70, metered_interfaces=["wwan0"],
                       windows=["01:00-02:00"])
    assert hold_back(cfg, Situation(), 10**6) == []  # nothing known: nothing holds it back
    from datetime import datetime

    reasons = hold_back(cfg, Situation(allow_updates=False, profile="critical", battery_percent=20, on_ac=False,
                                       cpu_percent=95, free_bytes=1_500_000, interface="wwan0",
                                       local_time=datetime(2026, 1, 1, 12, 0)), 1_000_000)
    assert reasons == ["power profile critical does not allow updates", "battery 20 % < 50 % and not on AC",
                       "CPU 95 % > 70 %", "outside the maintenance window 01:00-02:00 (local time 12:00)",
                       "free disk 1.5 MB < 2 x the download (1.0 MB)", "on a metered link (wwan0)"]
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway\nwlan0\t0000A8C0\t00000000\nwwan0\t00000000\t0100A8C0\n")
    assert default_route_interface(route) == "wwan0"
    assert default_route_interface(tmp_path / "missing") is None


# -- adaptive ----------------------------------------------------------------------------------

def _unhealthy(*reasons: str) -> Health:
    return Health(reasons=list(reasons), evidence=True, signals={"m/v2": {"window": 100, "error_rate": 0.2}})


HEALTHY = Health(evidence=True, signals={"m/v2": {"window": 100, "error_rate": 0.0, "low_confidence_share": 0.1,
                                                 "accuracy": 0.97}})


def test_adaptive_interval_halves_when_degraded_and_backs_off_after_recovery_within_bounds() -> None:
    health = {"now": HEALTHY}
    events = []
    cfg = UpdateConfig(strategy="adaptive", interval_s=3600, min_interval_s=600, max_interval_s=14400, jitter=0.0)
    s = Adaptive(cfg, Context(health=lambda: health["now"], emit=events.append))
    assert s.next_check(0.0, None)[0] == 3600
    health["now"] = _unhealthy("m/v2: error rate 20.0% over 5.0%")
    intervals = [s.next_check(0.0, object())[0] for _ in range(4)]
    assert intervals == [1800, 900, 600, 600]  # halves, bounded by min_interval_s
    delay, why = s.next_check(0.0, object())
    assert why == "adaptive: unhealthy (m/v2: error rate 20.0% over 5.0%); interval 600 s (at min_interval_s)"
    health["now"] = HEALTHY
    intervals = [s.next_check(0.0, object())[0] for _ in range(6)]
    assert intervals == [1200, 2400, 4800, 9600, 14400, 14400]  # doubles, bounded by max_interval_s
    delay, why = s.next_check(0.0, object())
    assert "healthy (m/v2: error rate 0.0%, low-confidence 10.0%, live accuracy 97.0% over 100 requests)" in why
    assert events[0] == {"event": "update-interval", "from_s": 3600, "to_s": 1800.0, "verdict": "unhealthy",
                         "reason": "m/v2: error rate 20.0% over 5.0%",
                         "health": {"reasons": ["m/v2: error rate 20.0% over 5.0%"], "evidence": True,
                                    "signals": {"m/v2": {"window": 100, "error_rate": 0.2}}}}
    assert all(e["event"] == "update-interval" for e in events) and len(events) == 3 + 5  # only changes


def test_adaptive_without_evidence_backs_off() -> None:
    cfg = UpdateConfig(strategy="adaptive", interval_s=1000, min_interval_s=100, max_interval_s=10_000, jitter=0.0)
    s = Adaptive(cfg, Context(health=lambda: Health()))
    s.next_check(0.0, None)
    delay, why = s.next_check(0.0, object())
    assert delay == 2000 and "no signal" in why
    jittered = Adaptive(UpdateConfig(strategy="adaptive", interval_s=1000, jitter=0.2),
                        Context(health=lambda: HEALTHY, rng=random.Random(3)))
    jittered.next_check(0.0, None)
    assert 1600 <= jittered.next_check(0.0, object())[0] <= 2400


def test_adaptive_with_use_conditions_obeys_them() -> None:
    device = FakeDevice(allow_updates=False, profile="critical")
    free = Adaptive(UpdateConfig(strategy="adaptive"), Context(situation=device))
    assert free.may_download(_found())[0]
    bound = Adaptive(UpdateConfig(strategy="adaptive", use_conditions=True), Context(situation=device))
    assert bound.may_download(_found()) == (False, "power profile critical does not allow updates")


def test_the_rate_cap_asks_for_the_waits_that_keep_the_average_under_it() -> None:
    import threading

    from edged.update.fetch import ResumableFetcher

    class RecordingStop(threading.Event):
        """Records the waits the fetcher asks for instead of sleeping through them."""

        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.waits.append(float(timeout or 0.0))
            return False

    stop = RecordingStop()
    f = ResumableFetcher(timeout_s=1, max_rate_kbps=800, stop=stop)  # 800 kbit/s = 100 kB/s
    try:
        for _ in range(10):
            f._throttle(50_000)  # 500 kB in all: 5 s at the cap
    finally:
        f.close()
    # The last wait brings the total to 5 s after the first chunk's start; time spent computing
    # between calls only shortens it (generous lower bound on a loaded machine).
    assert 4.0 <= max(stop.waits) <= 5.0, stop.waits
    unlimited = ResumableFetcher(timeout_s=1, max_rate_kbps=0, stop=RecordingStop())
    unlimited._throttle(10**9)
    assert unlimited.stop.waits == []  # type: ignore[attr-defined]
    unlimited.close()
