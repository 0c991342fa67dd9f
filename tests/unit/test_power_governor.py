"""Governor: token bucket, queue shedding, priorities, duty cycle, concurrency; exact numbers."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest

from edged import config as config_mod
from edged.power.config import DEFAULT_PROFILES, Profile
from edged.power.governor import Admission, Governor, expired
from edged.seams import FakeClock
from edged.server.powerctl import DEFERRED, PowerController

T0 = 1000.0


def gov(clock: FakeClock | None = None, workers: int = 2, server_queue: int = 64, **profile) -> Governor:
    """A governor in a "balanced" profile built from ``profile`` keys (``queue_size`` is the profile's)."""
    return Governor(Profile("balanced", **profile), clock or FakeClock(T0), workers=workers,
                    queue_size=server_queue, shed_retry_ms=5000)


def test_unlimited_admits_everything() -> None:
    g = gov()
    assert all(g.admit(p, T0).ok for p in ("low", "normal", "high") for _ in range(1000))
    assert g.counters() == {"admitted": 3000, "throttled": 0, "shed": 0}


def test_token_bucket_exact_retry() -> None:
    g = gov(max_rps=2.0)  # burst 2
    assert g.admit("normal", T0).ok and g.admit("normal", T0).ok
    a = g.admit("normal", T0)
    assert a == Admission(False, 500, "rate limit 2/s in profile balanced", "throttled")
    assert g.admit("normal", T0 + 0.25).retry_after_ms == 250  # half a token refilled
    assert g.admit("normal", T0 + 0.5).ok
    assert g.counters() == {"admitted": 3, "throttled": 2, "shed": 0}


def test_fractional_rate_has_burst_one() -> None:
    g = gov(max_rps=0.5)
    assert g.admit("normal", T0).ok
    assert g.admit("normal", T0).retry_after_ms == 2000
    assert g.admit("normal", T0 + 1.999).retry_after_ms == 1
    assert g.admit("normal", T0 + 2.0).ok


def test_refill_caps_at_burst() -> None:
    g = gov(max_rps=3.0)
    for _ in range(3):
        assert g.admit("normal", T0).ok
    # an hour idle refills to the burst (3), not 10800 tokens
    assert [g.admit("normal", T0 + 3600).ok for _ in range(4)] == [True, True, True, False]


def test_low_needs_half_full_bucket() -> None:
    g = gov(max_rps=10.0)  # burst 10; low needs 5 tokens
    for _ in range(6):
        assert g.admit("normal", T0).ok  # 4 left
    a = g.admit("low", T0)
    assert (a.ok, a.retry_after_ms, a.counter) == (False, 100, "throttled")
    assert "low needs the bucket half full" in a.reason
    assert g.admit("normal", T0).ok  # normal still gets one of the 4
    assert g.admit("low", T0 + 0.2).ok  # 3 + 2 refilled = 5


def test_high_bypasses_bucket_but_spends_tokens() -> None:
    g = gov(max_rps=2.0)
    assert g.admit("high", T0).ok and g.admit("high", T0).ok  # spent both tokens
    assert g.admit("normal", T0).retry_after_ms == 500
    assert all(g.admit("high", T0).ok for _ in range(10))  # never refused by the rate
    assert g.admit("normal", T0 + 0.5).ok  # the bucket did not go into debt


def test_min_priority_is_shed() -> None:
    g = Governor(DEFAULT_PROFILES["critical"], FakeClock(T0), workers=2, queue_size=64, shed_retry_ms=5000)
    a = g.admit("low", T0)
    assert a == Admission(False, 5000, "priority low is below normal in profile critical", "shed")
    assert g.admit("normal", T0).ok
    assert g.counters()["shed"] == 1


def test_queue_limits_by_priority() -> None:
    g = gov(server_queue=64, queue_size=8)
    assert g.queue_limit == 8
    assert g.admit("low", T0, queue_depth=3).ok
    low = g.admit("low", T0, queue_depth=4)  # low only below half of 8
    assert (low.ok, low.counter) == (False, "shed")
    assert low.reason == "queue has 4 waiting, low limit is 4 in profile balanced"
    assert g.admit("normal", T0, queue_depth=7).ok
    assert not g.admit("normal", T0, queue_depth=8).ok
    assert g.admit("high", T0, queue_depth=63).ok  # up to the server's hard limit
    assert not g.admit("high", T0, queue_depth=64).ok


def test_queue_refusal_spends_no_token() -> None:
    g = gov(max_rps=1.0, queue_size=4)
    assert not g.admit("normal", T0, queue_depth=4).ok
    assert g.admit("normal", T0, queue_depth=0).ok


def test_queue_full_retry_from_duty_cycle() -> None:
    clock = FakeClock(T0)
    g = gov(clock, workers=2, duty_cycle=0.5, queue_size=2)
    g.record_invoke(0, T0, 0.1)
    g.record_invoke(1, T0, 0.1)  # avg invoke: 0.05 + 0.2 * (0.1 - 0.05) = 0.06, then 0.068
    # per job at duty 0.5 over 2 workers: 0.068 / 0.5 / 2 = 0.068 s; workers ready at T0 + 0.2
    assert g.admit("normal", T0, queue_depth=2).retry_after_ms == 200
    assert g.admit("normal", T0 + 0.19, queue_depth=2).retry_after_ms == 68
    # The same figure for the server's other answers to a full queue (a job pushed out of it).
    assert (g.queue_full_retry_ms(T0), g.queue_full_retry_ms(T0 + 0.19)) == (200, 68)


def test_duty_cycle_wait() -> None:
    clock = FakeClock(T0)
    g = gov(clock, duty_cycle=0.25)
    assert g.wait_before_invoke(0) == 0.0
    g.record_invoke(0, started=T0, duration=0.1)
    clock.advance(0.1)  # the invoke ended now; cool-down is 0.1 * (1/0.25 - 1) = 0.3 s
    assert g.wait_before_invoke(0) == pytest.approx(0.3)
    assert g.wait_before_invoke(1) == 0.0  # per worker
    assert g.wait_before_invoke(0, now=T0 + 0.35) == pytest.approx(0.05)
    assert g.wait_before_invoke(0, now=T0 + 0.4) == 0.0
    g.apply_profile(Profile("performance"))  # duty 1.0: the cool-down disappears at once
    assert g.wait_before_invoke(0) == 0.0


def test_duty_cycle_bounds_busy_share() -> None:
    """A worker that always waits as told spends at most duty of wall time in inference."""
    clock = FakeClock(T0)
    g = gov(clock, duty_cycle=0.4)
    busy = 0.0
    for _ in range(100):
        clock.sleep(g.wait_before_invoke(0))
        started = clock.monotonic()
        clock.advance(0.03)
        busy += 0.03
        g.record_invoke(0, started, 0.03)
    clock.sleep(g.wait_before_invoke(0))
    assert busy / (clock.monotonic() - T0) == pytest.approx(0.4)


def test_high_is_admitted_in_critical_but_still_paced() -> None:
    clock = FakeClock(T0)
    g = Governor(DEFAULT_PROFILES["critical"], clock, workers=4, queue_size=64)
    results = [g.admit("high", T0, queue_depth=10) for _ in range(20)]  # over queue_size 4, over 2 rps
    assert all(a.ok for a in results)
    g.record_invoke(0, T0, 0.2)
    assert g.wait_before_invoke(0, now=T0 + 0.2) == pytest.approx(0.6)  # duty 0.25 still applies
    assert g.max_active == 1


def test_apply_profile_bucket_and_concurrency() -> None:
    g = gov(workers=4)
    assert g.max_active == 4
    g.apply_profile(Profile("powersave", max_rps=2.0, max_concurrency=2))
    assert g.max_active == 2
    assert g.admit("normal", T0).ok and g.admit("normal", T0).ok  # unlimited→limited starts full
    assert not g.admit("normal", T0).ok
    g.apply_profile(Profile("critical", max_rps=1.0, max_concurrency=8))
    assert g.max_active == 4  # never more than the server's workers
    assert g.admit("normal", T0).retry_after_ms == 1000  # tokens kept (0), not refilled by the switch
    g.apply_profile(replace(DEFAULT_PROFILES["performance"]))
    assert g.admit("low", T0).ok


def test_apply_profile_clamps_tokens() -> None:
    g = gov(max_rps=10.0)
    g.apply_profile(Profile("critical", max_rps=2.0))
    assert [g.admit("normal", T0).ok for _ in range(3)] == [True, True, False]


def test_clock_going_backwards_does_not_refill() -> None:
    g = gov(max_rps=1.0)
    assert g.admit("normal", T0 + 1).ok
    assert not g.admit("normal", T0).ok  # an earlier "now" from another thread
    assert not g.admit("normal", T0 + 1.5).ok
    assert g.admit("normal", T0 + 2.0).ok


def test_bad_arguments() -> None:
    g = gov()
    with pytest.raises(ValueError, match="priority must be one of"):
        g.admit("urgent", T0)
    with pytest.raises(ValueError, match="duration"):
        g.record_invoke(0, T0, -1.0)
    with pytest.raises(ValueError, match="workers"):
        Governor(Profile("balanced"), FakeClock(), workers=0)


def test_status_and_expired() -> None:
    g = gov(max_rps=4.0)
    g.admit("normal", T0)
    status = g.status()
    assert status["tokens"] == 3.0 and status["burst"] == 4.0 and status["admitted"] == 1
    json.dumps(status)
    assert not expired(None, T0)
    assert not expired(T0 + 1, T0)
    assert expired(T0, T0)


def test_thread_safety_admits_exactly_the_burst() -> None:
    g = gov(max_rps=50.0)
    results: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        local = [g.admit("normal", T0).ok for _ in range(100)]
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(results) == 50 and len(results) == 800
    assert g.counters() == {"admitted": 50, "throttled": 750, "shed": 0}


def test_a_wait_request_takes_one_token_whether_at_the_door_or_from_its_worker():
    # A `wait` request that gets a token at the door owes none; one over the limit is admitted
    # as DEFERRED and its worker takes the token (pace).  Each is counted as admitted once.
    clock = FakeClock(T0)
    pc = PowerController(config_mod.load(None, {"power.enabled": False}).power, clock, workers=1, queue_size=8)
    pc.governor.apply_profile(Profile("limited", max_rps=1.0))  # from unlimited: the bucket starts full (1)
    assert pc.admit("normal", True, 0) is None
    pc.pace(0, "normal", None, owes_token=False)  # its worker takes no second token
    assert pc.governor.counters()["admitted"] == 1
    assert pc.admit("normal", False, 0) is not None  # the bucket is empty: a plain request is refused
    assert pc.admit("normal", True, 0) is DEFERRED  # a waiting one is admitted, its token owed
    clock.advance(1.0)  # one token refills
    pc.pace(0, "normal", None, owes_token=True)
    assert pc.governor.counters()["admitted"] == 2
