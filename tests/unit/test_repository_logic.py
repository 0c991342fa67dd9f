"""Pure repository logic: probation verdicts, the state file, layout names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edged.config import ModelPolicy, ProbationConfig
from edged.errors import NotFoundError, RequestError
from edged.repository import layout
from edged.repository.manager import ProbationTracker
from edged.repository.state import Probation, StateStore


def tracker(baseline=100.0, **probation) -> ProbationTracker:
    return ProbationTracker("v2", started=0.0, policy=ModelPolicy(probation=ProbationConfig(**probation)),
                            baseline_p95_us=baseline)


def test_commit_needs_both_time_and_requests():
    t = tracker(seconds=60, requests=10)
    for _ in range(10):
        t.record(True, False, 100)
    assert t.verdict(now=59.0)[0] == "wait"
    assert t.verdict(now=60.0)[0] == "commit"
    idle = tracker(seconds=60, requests=10, max_seconds=0)
    assert idle.verdict(now=1e9)[0] == "wait"  # never exercised, and no time limit: not proven


def test_a_probation_without_traffic_ends_by_time():
    idle = tracker(seconds=60, requests=100, max_seconds=600)
    assert idle.verdict(now=599.0)[0] == "wait"
    verdict, why = idle.verdict(now=600.0)
    assert verdict == "commit" and "0 of 100 requests" in why and "max_seconds" in why
    assert tracker(seconds=900, requests=100, max_seconds=600).verdict(now=600.0)[0] == "wait"  # seconds first
    assert ProbationConfig().max_seconds > 0  # on by default: a rarely used model does not wait for ever


def test_ending_by_time_still_judges_what_little_traffic_there_was():
    t = tracker(requests=100, max_seconds=600, max_error_rate=0.05)
    for ok in (True, True, False):
        t.record(ok, False, 100)
    assert t.verdict(now=599.0)[0] == "wait"  # 3 requests: too few to judge a rate yet
    verdict, why = t.verdict(now=600.0)
    assert verdict == "rollback" and "error rate 1/3" in why


def test_probation_max_seconds_is_checked(tmp_path):
    from edged import config
    from edged.errors import ConfigError

    with pytest.raises(ConfigError, match="repository.probation.max_seconds"):
        config.load(None, {"repository.probation.max_seconds": -1})
    cfg = config.load(None, {"repository.probation.max_seconds": 0})
    assert cfg.repository.probation.max_seconds == 0.0


def test_error_rate_rolls_back_only_on_a_minimum_sample():
    t = tracker(requests=100, max_error_rate=0.05)
    t.record(False, False, None)
    assert t.verdict(0.0)[0] == "wait"  # one failure of one request is not a rate
    for _ in range(19):
        t.record(True, False, 100)
    verdict, why = t.verdict(0.0)
    assert verdict == "wait"  # 1/20 = 5 % is not over 5 %
    t.record(False, False, None)
    verdict, why = t.verdict(0.0)
    assert verdict == "rollback" and "error rate 2/21" in why


def test_nonfinite_outputs_roll_back():
    t = tracker(requests=5, max_nonfinite_rate=0.0)
    for i in range(5):
        t.record(True, i == 3, 100)
    verdict, why = t.verdict(0.0)
    assert verdict == "rollback" and "non-finite" in why


def test_outputs_of_non_finite_inputs_are_not_judged():
    t = tracker(requests=5, max_nonfinite_rate=0.0)
    for _ in range(25):
        t.record(True, None, 100)  # the caller sent NaN: not a sample of the model's numerics
    assert t.verdict(0.0)[0] == "wait" and t.judged == 0
    for i in range(5):
        t.record(True, i == 3, 100)
    verdict, why = t.verdict(0.0)
    assert verdict == "rollback" and "1/5 requests with finite inputs" in why


def test_p95_ratio_needs_an_absolute_slowdown_too():
    jitter = tracker(baseline=20.0, requests=20, max_p95_ratio=3.0, min_p95_delta_ms=1.0)
    for _ in range(20):
        jitter.record(True, False, 250)  # 12x slower, but only 0.23 ms: noise on a tiny model
    assert jitter.verdict(0.0)[0] == "wait"
    slow = tracker(baseline=1000.0, requests=20, max_p95_ratio=3.0, min_p95_delta_ms=1.0)
    for _ in range(20):
        slow.record(True, False, 30_000)
    verdict, why = slow.verdict(0.0)
    assert verdict == "rollback" and "30.0x" in why


def test_state_store_persists_atomically(tmp_path: Path):
    store = StateStore(tmp_path)
    assert not store.found
    store.update("m", committed="v1", probation=Probation("v2", "v1", 1, 5.0, baseline_p95_us=812.5))
    store.mark_bad("m", "v3", "NaN")
    again = StateStore(tmp_path)
    st = again.get("m")
    assert again.found and st.committed == "v1" and st.probation == Probation("v2", "v1", 1, 5.0, 812.5)
    assert st.bad == {"v3": "NaN"}
    assert again.unmark("m", "v3") and not StateStore(tmp_path).get("m").bad
    assert [p.name for p in (tmp_path / ".edged").iterdir()] == ["state.json"]  # no temp files left


def test_state_written_by_another_edged_version_still_loads(tmp_path: Path):
    (tmp_path / ".edged").mkdir()
    (tmp_path / ".edged" / "state.json").write_text(
        '{"models": {"m": {"committed": "v1", "probation": {"version": "v2", "previous": "v1", "attempts": 1}}}}')
    st = StateStore(tmp_path).get("m")  # older file: no baseline recorded
    assert st.probation == Probation("v2", "v1", 1) and st.probation.baseline_p95_us is None
    (tmp_path / ".edged" / "state.json").write_text(
        '{"models": {"m": {"probation": {"version": "v2", "previous": null, "from_the_future": true}}}}')
    assert StateStore(tmp_path).get("m").probation == Probation("v2", None)


def test_corrupt_state_file_is_not_fatal(tmp_path: Path, caplog):
    (tmp_path / ".edged").mkdir()
    (tmp_path / ".edged" / "state.json").write_text("{not json")
    store = StateStore(tmp_path)
    assert store.get("m").committed is None
    assert "unreadable" in caplog.text


def test_names_and_versions(tmp_path: Path):
    assert layout.version_number("v12") == 12 and layout.version_number("7") == 7
    assert layout.version_number("v1a") is None and layout.version_number("current") is None
    for bad in ("../x", "a/b", ".hidden", "", "current", None, "x" * 200):
        with pytest.raises(RequestError):
            layout.check_name("version", bad)
    m = tmp_path / "m"
    for v in ("v10", "v2", "3", ".v99", "notes"):
        (m / v).mkdir(parents=True)
    assert layout.version_names(m) == ["v2", "3", "v10"]
    layout.set_current(m, "v10")
    assert os.readlink(m / "current") == "v10" and layout.current_link(m) == "v10"
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", m / "v11")  # a symlink escaping the model dir is not a version
    assert "v11" not in layout.version_names(m)
    with pytest.raises(NotFoundError) as err:
        layout.version_dir(tmp_path, "m", "v99")
    assert err.value.details["versions"] == ["v2", "3", "v10"] and "(versions: v2, 3, v10)" in err.value.message
    with pytest.raises(NotFoundError, match=r"\(versions: none\)") as err:
        layout.version_dir(tmp_path, "new", "v1")
    assert err.value.details["versions"] == []


def test_keep_previous_only_while_memory_allows(tmp_path: Path, caplog):
    from types import SimpleNamespace

    from edged import config as config_mod
    from edged.repository.manager import ModelManager

    cfg = config_mod.load(None, {"repository.path": str(tmp_path)})
    free = {"bytes": 1 << 30}
    mgr = ModelManager(cfg, backend=None, available_memory=lambda: free["bytes"])
    old = SimpleNamespace(name="m", version="v1", size=10 << 20)  # needs 64 + 40 MiB
    assert mgr._can_keep(old)
    free["bytes"] = 100 << 20
    assert not mgr._can_keep(old)
    assert "not kept loaded for rollback" in caplog.text
    assert not mgr._can_keep(None)
    unknown = ModelManager(cfg, backend=None, available_memory=lambda: None)  # no reading: keep, as configured
    assert unknown._can_keep(old)


@pytest.mark.runtime
def test_live_loads_are_paced_on_the_clock_and_boot_loads_are_not(tmp_path: Path, backend):
    from edged import config as config_mod
    from edged.repository.manager import LOAD_PAUSE_S, ModelManager
    from edged.seams import FakeClock
    from edged.testing import tflite_build as tb

    vdir = tmp_path / "m" / "v1"
    vdir.mkdir(parents=True)
    (vdir / "model.tflite").write_bytes(tb.random_classifier(seed=1))
    cfg = config_mod.load(None, {"repository.path": str(tmp_path), "server.workers": 2,
                                        "runtime.solo_threads": 1})  # no solo interpreter: 2 builds
    clock = FakeClock()
    mgr = ModelManager(cfg, backend=backend, clock=clock)
    t0 = clock.monotonic()
    mgr.load("m", "v1")
    assert clock.monotonic() == t0  # starting up: nothing to make room for
    mgr.load("m", "v1", live=True)
    assert clock.monotonic() - t0 == pytest.approx(3 * LOAD_PAUSE_S)  # 1 between builds + 2 before warm-ups


def test_after_a_switch_the_retired_version_drops_its_solo_interpreter_even_when_still_referenced(
        tmp_path: Path, backend):
    from edged import config as config_mod
    from edged.repository.manager import ModelManager
    from edged.seams import FakeClock
    from edged.testing import tflite_build as tb

    vdir = tmp_path / "m" / "v1"
    vdir.mkdir(parents=True)
    (vdir / "model.tflite").write_bytes(tb.random_classifier(seed=1))
    cfg = config_mod.load(None, {"repository.path": str(tmp_path), "server.workers": 1,
                                 "runtime.solo_threads": 2})
    mgr = ModelManager(cfg, backend=backend, clock=FakeClock())
    old = mgr.load("m", "v1")  # at boot: with its solo interpreter
    new = mgr.load("m", "v1", live=True)  # while serving: the solo interpreter comes after the switch
    assert (old.solo_threads, new.solo_threads) == (2, 0)
    queued_job_model = old  # a queued job (or keep_previous) still holds the retired version
    mgr._settle(new, old)
    assert (queued_job_model.solo_threads, new.solo_threads) == (0, 2)  # one solo interpreter, the serving one's


def test_a_starved_validation_is_retried_later_and_a_hang_is_remembered(tmp_path: Path, monkeypatch):
    from types import SimpleNamespace

    from edged import config as config_mod
    from edged.errors import ErrorCode, ModelError
    from edged.repository import check
    from edged.repository.manager import VALIDATION_RETRY_S, ModelManager, ModelSlot, _Op
    from edged.seams import FakeClock

    for v in ("v1", "v2"):
        (tmp_path / "m" / v).mkdir(parents=True)
        (tmp_path / "m" / v / "model.tflite").write_bytes(b"stand-in: validation is faked below")
    cfg = config_mod.load(None, {"repository.path": str(tmp_path)})
    clock = FakeClock()
    mgr = ModelManager(cfg, backend=SimpleNamespace(name="litert"), clock=clock)
    slot = mgr.slots["m"] = ModelSlot("m")
    events: list[dict] = []
    mgr.emit = events.append

    def starved(*args, **kw):
        raise check.ValidationStarved("validation did not finish within 30s because the machine was too busy")

    monkeypatch.setattr(check, "validate_in_child", starved)
    with pytest.raises(check.ValidationStarved):
        mgr._swap(_Op("swap", "m", "v2", reason="auto"))
    assert slot.rejected == {} and events == []  # not the version's fault: not remembered
    assert mgr.rescan_at == pytest.approx(clock.monotonic() + VALIDATION_RETRY_S)

    def hung(*args, **kw):
        raise ModelError("validation hung: no result within 30s", code=ErrorCode.VALIDATION_FAILED)

    monkeypatch.setattr(check, "validate_in_child", hung)
    with pytest.raises(ModelError):
        mgr._swap(_Op("swap", "m", "v2", reason="auto"))
    assert slot.rejected["v2"][1] == "validation hung: no result within 30s"  # not retried until republished
    assert events[-1]["event"] == "rejected"
