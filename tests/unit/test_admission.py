"""A predict's way into the queue on a real Daemon in process: governor first, then the scheduler,
unless the main loop runs it itself.

Where the queue is judged, workers are held back (concurrency bound 0), so the queue only
changes when the test submits: what is full, who is pushed out and what each refusal says are exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import zmq

from edged import config as config_mod
from edged import protocol
from edged.errors import Throttled
from edged.power.config import Profile
from edged.seams import FakeClock
from edged.server.api import Request
from edged.server.daemon import Daemon, Job
from tests.conftest import runtime_choice


def started(repo, sockdir, **overrides: Any) -> Daemon:
    """A started Daemon: one worker, a queue of 4, power off (profile performance)."""
    cfg = config_mod.load(None, {"server.endpoint": f"ipc://{sockdir}/p.sock",
                                 "server.control_endpoint": f"ipc://{sockdir}/c.sock",
                                 "server.workers": 1, "server.queue_size": 4, "power.enabled": False,
                                 "repository.path": str(repo), "repository.watch": False,
                                 "runtime.backend": runtime_choice(), **overrides})
    d = Daemon(cfg, clock=FakeClock())
    d.startup()
    return d


@pytest.fixture
def held(repo, sockdir):
    """A started Daemon whose worker takes nothing."""
    d = started(repo, sockdir)
    d.scheduler.set_max_active(0)
    yield d
    d.scheduler.drain()
    d.scheduler.set_max_active(None)
    d.shutdown()


def predict(d: Daemon, client: bytes, rid: str, priority: str = "normal") -> Request:
    header = {"v": 1, "id": rid, "op": "predict", "priority": priority,
              "inputs": [{"dtype": "float32", "shape": [1, 8, 8, 1]}]}
    return Request("predict", [zmq.Frame(client)], header, [], d.clock.monotonic())


@pytest.mark.runtime
def test_a_job_pushed_out_of_a_full_queue_is_told_to_wait_as_long_as_a_refused_one(held, monkeypatch):
    d = held
    replies: list[tuple[Request, dict[str, Any]]] = []
    monkeypatch.setattr(d, "reply", lambda req, header, arrays=None: replies.append((req, header)))
    # Measured: one invoke of 300 ms just started on the one worker (duty cycle 1).
    d.power.record(0, d.clock.monotonic(), 0.3)
    for i in range(4):
        d.submit_predict(predict(d, b"A", f"a{i}"))  # alone, A may fill the queue
    d.submit_predict(predict(d, b"B", "b0"))  # B takes A's newest place
    ((req, header),) = replies
    assert req.id == "a3" and header["error"]["code"] == "THROTTLED" and "pushed out" in header["error"]["message"]
    with pytest.raises(Throttled) as refused:
        d.submit_predict(predict(d, b"A", "a4"))  # A holds the most: nobody fairer to take a place from
    # Both are answers to the same full queue: retry once the running job has cleared (300 ms), not after 50 ms.
    assert header["error"]["retry_after_ms"] == refused.value.retry_after_ms == 300
    assert d.scheduler.depth() == 4


@pytest.mark.runtime
def test_the_governor_judges_the_queue_a_push_out_would_leave_and_sheds_what_finds_no_room(held, monkeypatch):
    d = held
    replies: list[Request] = []
    monkeypatch.setattr(d, "reply", lambda req, header, arrays=None: replies.append(req))
    for i in range(3):
        d.submit_predict(predict(d, b"A", f"a{i}"))
    # low may find 2 queued (half of 4); a push-out of A's newest would leave 2: still no room.
    with pytest.raises(Throttled, match="queue has 2 waiting, low limit is 2") as refused:
        d.submit_predict(predict(d, b"C", "c0", "low"))
    assert refused.value.details["profile"] == "performance"
    assert replies == [] and d.scheduler.depth() == 3  # nobody was pushed out for a request that was refused
    d.submit_predict(predict(d, b"B", "b0"))  # normal may find 4: room without a push-out
    d.submit_predict(predict(d, b"C", "c1"))  # a push-out of A's newest leaves 3: admitted, a2 answered
    assert [r.id for r in replies] == ["a2"] and d.scheduler.depth() == 4
    assert d.power.governor.counters()["shed"] == 1  # the refusal, counted where the power status shows it
    assert d.stats_snapshot()["models"][0]["shed"] == 2  # the refusal and the push-out


@pytest.mark.runtime
def test_a_lone_quick_predict_runs_on_the_main_loop_whoever_submits_it_and_a_frigate_frame_never(repo, sockdir,
                                                                                                  monkeypatch):
    d = started(repo, sockdir, **{"runtime.num_threads": 1, "runtime.solo_threads": 2})
    try:
        replies: list[dict[str, Any]] = []
        monkeypatch.setattr(d, "reply", lambda req, header, arrays=None: replies.append(header))
        model = d.models.get(None)
        model.recent_invoke_us.append(100)  # its last invoke() took 0.1 ms: within server.inline_max_ms
        x = np.zeros((1, 8, 8, 1), np.float32)
        header = {"v": 1, "id": "p", "op": "predict", "inputs": [protocol.tensor_meta(x)]}
        d.submit_predict(Request("predict", [zmq.Frame(b"A")], header, [zmq.Frame(x.tobytes())], d.clock.monotonic()))
        assert d.inline_runs == 1 and [r.get("version") for r in replies] == [model.version], replies
        assert d.scheduler.idle(), "run and done, never queued"
        # Everything else the same, a frame from the Frigate socket stays off the main loop: its
        # worker or the budget expiry answers it, whichever claims it first.
        frame = Request("frigate", [zmq.Frame(b"F")], dict(header), [zmq.Frame(x.tobytes())], d.clock.monotonic())
        assert not d._take_inline(Job(frame, model, None, 0, "normal", owes_token=False))
        # The inline run skips the worker's pacing, so whatever pacing would wait for stays off
        # the main loop: a request admitted over the rate limit that waits for its token, and
        # any request while the duty cycle's cool-down runs.  Neither is counted as taken.
        lone = Request("predict", [zmq.Frame(b"A")], dict(header), [zmq.Frame(x.tobytes())], d.clock.monotonic())
        assert not d._take_inline(Job(lone, model, None, 0, "normal", owes_token=True))
        monkeypatch.setattr(d.power.governor, "wait_before_invoke", lambda worker_id, now=None: 0.25)
        assert not d._take_inline(Job(lone, model, None, 0, "normal", owes_token=False))
        assert d.scheduler.idle()
    finally:
        d.shutdown()


@pytest.mark.runtime
def test_a_wait_request_that_gets_a_token_at_the_door_owes_none_and_may_run_inline(repo, sockdir, monkeypatch):
    d = started(repo, sockdir, **{"runtime.num_threads": 1, "runtime.solo_threads": 2})
    try:
        replies: list[dict[str, Any]] = []
        monkeypatch.setattr(d, "reply", lambda req, header, arrays=None: replies.append(header))
        d.power.governor.apply_profile(Profile("limited", max_rps=1.0))  # from unlimited: one token in the bucket
        model = d.models.get(None)
        model.recent_invoke_us.append(100)
        x = np.zeros((1, 8, 8, 1), np.float32)
        header = {"v": 1, "id": "w", "op": "predict", "inputs": [protocol.tensor_meta(x)], "wait": True}
        d.submit_predict(Request("predict", [zmq.Frame(b"A")], header, [zmq.Frame(x.tobytes())], d.clock.monotonic()))
        assert [r.get("ok", True) for r in replies] == [True] and d.inline_runs == 1
        assert d.power.governor.counters()["admitted"] == 1  # one token, taken at the door
    finally:
        d.shutdown()
