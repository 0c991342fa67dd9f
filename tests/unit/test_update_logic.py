"""The update decisions and strategies as pure logic (no registry, no daemon, no sleeping)."""

from __future__ import annotations

import random

import pytest

from edged.config import UpdateConfig
from edged.update.decide import LocalModel, decide
from edged.update.rollout import bucket
from edged.update.strategy import Off, Periodic, make_strategy


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
    s = Periodic(UpdateConfig(strategy="periodic", url="http://r", interval_s=600, jitter=jitter), random.Random(1))
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
