"""FrigateEndpoint without sockets: budget expiry, reply encoding, log-once (edged/server/frigate.py)."""

from __future__ import annotations

import json
import logging
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import zmq

from edged.config import FrigateConfig
from edged.server.dispatch import Request
from edged.server.frigate import FrigateEndpoint
from edged.server.metrics import Stats


class FakeDaemon:
    def __init__(self) -> None:
        self.config = SimpleNamespace(server=SimpleNamespace(max_message_bytes=1000, max_header_bytes=200))
        self.stats = Stats()
        self.replies: list[tuple[Request, dict[str, Any]]] = []
        self.woken = 0

    def reply(self, req: Request, header: dict[str, Any]) -> None:
        self.replies.append((req, header))

    def wake(self) -> None:
        self.woken += 1


def frame_job(deadline: float, taken: bool = False) -> Any:
    req = Request("frigate", [b"peer", b""], {"op": "frigate_detect"}, [], deadline - 0.15)
    job = SimpleNamespace(req=req, deadline=deadline, claim=threading.Lock(),
                          model=SimpleNamespace(name="detector", version="v1"))
    if taken:
        job.claim.acquire()  # a worker has it
    return job


def test_expire_answers_only_unclaimed_frames_past_their_budget():
    daemon = FakeDaemon()
    ep = FrigateEndpoint(daemon, FrigateConfig(budget_ms=150))
    late, running, fresh = frame_job(10.0), frame_job(10.05, taken=True), frame_job(10.2)
    for job in (late, running, fresh):
        ep.track(job)
    assert ep.expire(10.1) == pytest.approx(0.1)
    assert [r for r, _ in daemon.replies] == [late.req]
    assert daemon.replies[0][1]["error"]["code"] == "DEADLINE_EXCEEDED"
    assert not late.claim.acquire(blocking=False), "the worker that takes it later must skip it"
    assert daemon.stats.snapshot()["models"][0]["shed"] == 1
    assert ep.expire(11.0) == 3600.0
    assert [r for r, _ in daemon.replies] == [late.req, fresh.req]


def test_failed_frames_encode_to_zeros_and_count_by_reason():
    daemon = FakeDaemon()
    ep = FrigateEndpoint(daemon, FrigateConfig())
    req = Request("frigate", [], {"op": "frigate_detect"}, [], 0.0)
    for code, reason in (("THROTTLED", "throttled"), ("DEADLINE_EXCEEDED", "budget"), ("BAD_SHAPE", "input"),
                         ("INTERNAL", "error")):
        (frame,) = ep.encode(req, {"ok": False, "error": {"code": code, "message": "m"}}, [])
        assert len(frame) == 480 and not np.frombuffer(frame, np.float32).any()
    ep.encode(req, {"ok": False, "error": {"code": "BAD_REQUEST", "message": "m", "frigate_reason": "model_type"}},
              [])
    assert daemon.stats.snapshot()["frigate_dropped"] == {
        "budget": 1, "error": 1, "input": 1, "model_type": 1, "throttled": 1}


def test_hand_shake_replies_are_single_json_frames_even_on_errors():
    ep = FrigateEndpoint(FakeDaemon(), FrigateConfig())
    model = Request("frigate", [], {"op": "frigate_model", "model_name": "x.tflite"}, [], 0.0)
    push = Request("frigate", [], {"op": "frigate_push", "model_name": "x.tflite"}, [], 0.0)
    error = {"ok": False, "error": {"code": "UNKNOWN_MODEL", "message": "none"}}
    assert json.loads(ep.encode(model, dict(error), [])[0]) == {"model_available": False, "model_loaded": False}
    assert json.loads(ep.encode(push, dict(error), [])[0]) == {"model_saved": False, "model_loaded": False}
    ok = {"ok": True, "frigate": {"model_available": True, "model_loaded": True}}
    assert json.loads(ep.encode(model, ok, [])[0]) == {"model_available": True, "model_loaded": True}


def test_log_once_per_key_and_bounded(caplog):
    ep = FrigateEndpoint(FakeDaemon(), FrigateConfig())
    with caplog.at_level(logging.INFO, logger="edged.frigate"):
        for _ in range(3):
            ep.log_once("same", logging.ERROR, "problem %s", "x" * 500)
        for i in range(400):
            ep.log_once(f"k{i}", logging.ERROR, "problem %s", i)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "problem " + "x" * 200 + "..."
    assert len(lines) == 257 and "no more are logged" in lines[-1]  # 256 problems, then one notice


def test_a_dtype_that_is_not_a_string_is_a_bad_request_not_a_traceback():
    from edged.errors import ErrorCode, RequestError
    from edged.server.commands import frigate_detect

    for dtype in (["uint8"], {"a": 1}, 7, None):
        with pytest.raises(RequestError) as err:
            frigate_detect.validate({"dtype": dtype, "shape": [1, 8, 8, 3]}, [b"x"])
        assert err.value.code is ErrorCode.BAD_DTYPE


def test_a_second_push_while_one_is_being_validated_is_refused_at_once():
    from edged.server.commands import frigate_push

    daemon = FakeDaemon()
    ep = FrigateEndpoint(daemon, FrigateConfig(accept_pushed_models=True))
    ep._pushing = True  # the first push's thread is storing or validating it
    ep.push(Request("frigate", [b"peer", b""], {"op": "frigate_push", "model_name": "m"}, [b"TFL3"], 0.0))
    assert daemon.replies[-1][1] == {"frigate": {"model_saved": False, "model_loaded": False}}
    assert frigate_push.CHANGES_VERSIONS  # and refused while the daemon drains, like swap


def test_a_push_stored_before_a_stop_is_not_swapped_in_during_the_drain(monkeypatch, tmp_path):
    from edged.repository import pack as pack_mod
    from edged.states import DaemonState

    daemon = FakeDaemon()
    asked: list[str] = []
    daemon.models = SimpleNamespace(scan=lambda: asked.append("scan"),
                                    request=lambda *a, **kw: asked.append("swap"))
    daemon.post = lambda req, header: daemon.replies.append((req, header))
    monkeypatch.setattr(pack_mod, "pack", lambda *a, **kw: None)  # stored
    ep = FrigateEndpoint(daemon, FrigateConfig(accept_pushed_models=True))
    ep._pushing = True
    req = Request("frigate", [b"peer", b""], {"op": "frigate_push", "model_name": "m"}, [b"TFL3"], 0.0)
    ep._store(req, "detector", b"TFL3", tmp_path, "litert")  # the push thread: queues the swap on the main loop
    daemon.state = DaemonState.DRAINING  # a stop begins before the main loop turns
    ep.expire(0.0)
    assert asked == []  # no scan, no swap during the drain
    assert daemon.replies[-1][1] == {"frigate": {"model_saved": True, "model_loaded": False}}
    assert ep._pushing is False  # a push after the restart is accepted again


def test_a_message_over_max_message_bytes_is_refused_as_frigate_reads_a_refusal(caplog):
    daemon = FakeDaemon()
    ep = FrigateEndpoint(daemon, FrigateConfig())
    detect = json.dumps({"shape": [1, 32, 32, 1], "dtype": "uint8", "model_type": "ssd"}).encode()
    push = json.dumps({"model_data": True, "model_name": "big.tflite"}).encode()
    with caplog.at_level(logging.INFO, logger="edged.frigate"):
        for _ in range(3):  # a misconfigured Frigate sends the same frame at 5-30 fps
            ep.handle([zmq.Frame(b"peer"), zmq.Frame(b"")], [zmq.Frame(detect), zmq.Frame(b"\0" * 1024)], 0.0)
        ep.handle([zmq.Frame(b"peer"), zmq.Frame(b"")], [zmq.Frame(push), zmq.Frame(b"TFL3" * 256)], 0.0)
    # Refused before dispatch (FakeDaemon has no models: a dispatched frame would be INTERNAL).
    assert [h["error"]["code"] for _, h in daemon.replies] == ["TOO_LARGE"] * 4
    frames = [ep.encode(req, header, []) for req, header in daemon.replies]
    assert all(len(f[0]) == 480 and not np.frombuffer(f[0], np.float32).any() for f in frames[:3])
    assert json.loads(frames[3][0]) == {"model_saved": False, "model_loaded": False}
    assert daemon.stats.snapshot()["frigate_dropped"] == {"input": 3}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and not any(r.exc_info for r in caplog.records), lines
    assert "no detections (input): message is 1" in lines[0] and "limit 1000 (server.max_message_bytes)" in lines[0]
    assert "'big.tflite'; refused: message is 1" in lines[1]


def test_a_frame_that_arrives_during_a_drain_is_refused_and_never_run(caplog):
    from edged.server.dispatch import dispatch
    from edged.states import DaemonState

    daemon = FakeDaemon()
    ep = FrigateEndpoint(daemon, FrigateConfig())
    daemon.frigate = SimpleNamespace(detect=lambda req: pytest.fail("a frame ran during the drain"))
    daemon.state = DaemonState.DRAINING
    header = {"op": "frigate_detect", "shape": [1, 32, 32, 1], "dtype": "uint8", "model_type": "ssd"}
    with caplog.at_level(logging.INFO, logger="edged.frigate"):
        for _ in range(3):
            dispatch(daemon, Request("frigate", [b"peer", b""], dict(header), [b"\0" * 1024], 0.0))
            (frame,) = ep.encode(*daemon.replies[-1], [])
            assert len(frame) == 480 and not np.frombuffer(frame, np.float32).any()
    assert [h["error"]["code"] for _, h in daemon.replies] == ["SHUTTING_DOWN"] * 3
    assert daemon.stats.snapshot()["frigate_dropped"] == {"shutting_down": 3}
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.INFO  # once, then counted


class FakeModel:
    """The parts of a LoadedModel a frame is checked against: an SSD with a uint8 [1, 32, 32, 3] input."""

    def __init__(self, version: str) -> None:
        self.name, self.version = "detector", version
        self.inputs = [SimpleNamespace(dtype=np.dtype("uint8"), shape=(1, 32, 32, 3))]
        self.outputs = [SimpleNamespace(shape=s) for s in ((1, 10, 4), (1, 10), (1, 10), (1,))]


def test_the_output_layout_is_checked_once_per_loaded_version_and_model_type(monkeypatch):
    from edged.errors import RequestError
    from edged.runtime import detection

    checked = []
    real = detection.check_layout
    monkeypatch.setattr(detection, "check_layout", lambda kind, shapes: checked.append(kind) or real(kind, shapes))
    daemon = FakeDaemon()
    v1, v2 = FakeModel("v1"), FakeModel("v2")
    serving = [v1]
    daemon.models = SimpleNamespace(get=lambda name: serving[0])
    daemon.submit_predict = lambda req: SimpleNamespace(req=req)
    ep = FrigateEndpoint(daemon, FrigateConfig())

    def frame(model_type: str = "ssd") -> None:
        ep.detect(Request("frigate", [b"peer", b""], {"op": "frigate_detect", "shape": [1, 32, 32, 3],
                                                      "dtype": "uint8", "model_type": model_type}, [b""], 0.0))

    for _ in range(3):
        frame()
    assert checked == ["ssd"]
    serving[0] = v2  # a hot swap: the new version is checked on its first frame
    for _ in range(3):
        frame()
    assert checked == ["ssd", "ssd"]
    for _ in range(2):  # a layout that does not fit is refused every time, checked once
        with pytest.raises(RequestError, match="yolo-generic needs one output") as err:
            frame("yologeneric")
        assert err.value.to_wire()["frigate_reason"] == "layout"
    assert checked == ["ssd", "ssd", "yolo-generic"]
    assert len(ep._pending) == 6
    del v1  # swapped out and unreferenced: the cache does not keep it alive
    assert len(ep._layouts) == 1
