"""Worker supervision: a worker thread that ends is logged and restarted, or reported as lost."""

from __future__ import annotations

import threading
import time

import pytest

from edged.seams import FakeClock
from edged.server.dispatch import encode_reply
from edged.server.notify import WatchdogGate
from edged.server.workers import WorkerPool


class Target:
    """A worker loop the test steers: each call blocks until released, then returns or raises."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.release = threading.Event()
        self.die = True

    def __call__(self, worker_id: int) -> None:
        self.calls.append(worker_id)
        if worker_id == 0 and self.die:
            raise RuntimeError("boom")
        self.release.wait(30)


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def target():
    t = Target()
    yield t
    t.release.set()


def test_a_dead_worker_is_logged_and_restarted(target, caplog):
    clock = FakeClock()
    pool = WorkerPool(target, 2, clock)
    pool.start()
    wait_for(lambda: pool.alive() == 1)
    assert "worker 0 died" in caplog.text and "RuntimeError: boom" in caplog.text  # with its traceback
    assert pool.problem() == ""  # not lost: it will be restarted
    target.die = False
    pool.check(clock.monotonic())
    wait_for(lambda: target.calls.count(0) == 2)
    assert pool.alive() == 2 and pool.restarts == 1 and pool.lost() == []


def test_a_worker_that_keeps_dying_is_given_up_and_reported(target):
    clock = FakeClock()
    pool = WorkerPool(target, 2, clock, max_restarts=3, window_s=60.0)
    pool.start()
    for _ in range(3):
        wait_for(lambda: pool.alive() == 1)
        pool.check(clock.monotonic())
        clock.advance(1.0)
    wait_for(lambda: pool.alive() == 1)
    pool.check(clock.monotonic())
    assert pool.lost() == [0]
    assert "worker 0 died again after 3 restarts" in pool.problem()
    # Restarts spread over more than the window are not a crash loop.
    pool2 = WorkerPool(target, 1, clock, max_restarts=1, window_s=10.0)
    pool2.start()
    for _ in range(3):
        wait_for(lambda: pool2.alive() == 0)
        clock.advance(11.0)
        pool2.check(clock.monotonic())
    assert pool2.lost() == [] and pool2.restarts == 3


def test_a_thread_that_cannot_start_is_lost_capacity(target, monkeypatch):
    clock = FakeClock()
    pool = WorkerPool(target, 2, clock)
    pool.start()
    wait_for(lambda: pool.alive() == 1)

    def refuse(self) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    pool.check(clock.monotonic())
    assert pool.lost() == [0] and "cannot start a thread" in pool.problem()


def test_no_restart_after_close(target):
    clock = FakeClock()
    pool = WorkerPool(target, 2, clock)
    pool.start()
    wait_for(lambda: pool.alive() == 1)
    pool.close()
    pool.check(clock.monotonic())
    assert pool.alive() == 1 and pool.restarts == 0


def test_watchdog_gate_withholds_the_ping_while_capacity_is_lost():
    problem = ""
    gate = WatchdogGate(FakeClock(), 1.0, lambda: 0.0, stuck_invoke_s=30.0, capacity_problem=lambda: problem)
    assert gate.should_ping()
    problem = "1 of 2 workers lost for good"
    assert not gate.should_ping() and gate.reason == problem


def test_a_reply_that_cannot_be_serialised_becomes_internal(caplog):
    raw = encode_reply({"v": 1, "id": float("nan"), "op": "predict", "ok": True, "top_k": [{"score": float("inf")}]})
    assert raw == (b'{"v":1,"id":null,"op":"predict","ok":false,"error":{"code":"INTERNAL",'
                   b'"message":"internal error (ValueError); see the daemon log"}}')
    assert b'"id":"7"' in encode_reply({"v": 1, "id": "7", "op": "x", "bad": object()})


@pytest.fixture
def live(repo, sockdir):
    """A real Daemon started in process (sockets bound, workers running) on a fake clock; no main loop."""
    from edged import config as config_mod
    from edged.server.daemon import Daemon
    from tests.conftest import runtime_choice

    cfg = config_mod.load(None, {"server.endpoint": f"ipc://{sockdir}/p.sock",
                                 "server.control_endpoint": f"ipc://{sockdir}/c.sock",
                                 "repository.path": str(repo), "repository.watch": False,
                                 "runtime.backend": runtime_choice()})
    d = Daemon(cfg, clock=FakeClock())
    d.startup()
    yield d
    d.shutdown()


@pytest.mark.runtime
def test_a_bug_handling_one_message_is_answered_internal_and_the_loop_goes_on(live, monkeypatch):
    import zmq

    def bug(endpoint, frames):
        raise KeyError("a bug")

    monkeypatch.setattr(live, "_handle", bug)
    client = live.ctx.socket(zmq.DEALER)
    client.connect(live.config.endpoint)
    try:
        client.send_multipart([b'{"v": 1, "id": "x", "op": "health"}'])
        assert live.predict_sock.poll(10_000)
        live._read("predict", live.predict_sock)  # used to raise out of the main loop
        assert client.poll(10_000)
        reply = client.recv_multipart()
    finally:
        client.close(0)
    assert b'"code":"INTERNAL"' in reply[0] and b'"id":null' in reply[0]


@pytest.mark.runtime
def test_daemon_health_reports_a_worker_killed_outside_a_request_and_its_restart(live):
    """A real Daemon in process: a worker thread ended by a bug (not a request) shows in health."""
    d, clock = live, live.clock
    assert d.health()["status"] == "ok"
    d.scheduler.set_max_active(1)  # only worker 0 takes jobs: the same worker dies each time
    # Not a Job: the worker's error path itself fails, which ends the loop.
    d.scheduler.submit(object())
    wait_for(lambda: d.workers.alive() == 1)
    health = d.health()
    assert health["status"] == "degraded" and health["workers"] == {"configured": 2, "alive": 1, "lost": []}
    assert "restarting" in " ".join(health["problems"])
    d.workers.check(clock.monotonic())
    assert d.health()["status"] == "ok" and d.status()["workers"]["restarts"] == 1
    for _ in range(3):  # crash loop: given up, health and the watchdog gate say so
        d.scheduler.submit(object())
        wait_for(lambda: d.workers.alive() == 1)
        d.workers.check(clock.monotonic())
    health = d.health()
    assert health["workers"]["alive"] == 1 and len(health["workers"]["lost"]) == 1, health
    assert any("lost for good" in p for p in health["problems"])
    gate = WatchdogGate(clock, 1.0, d.longest_invoke, 30.0, capacity_problem=d.workers.problem)
    assert not gate.should_ping() and "lost for good" in gate.reason
