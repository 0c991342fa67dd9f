"""The client against a scripted in-process ROUTER: timeouts, Lazy Pirate reset, id matching, typed errors."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from edged import protocol
from edged.client import Client
from edged.errors import ErrorCode, Throttled, TransportError


class ScriptedServer:
    """Answers each request with the next scripted action: 'drop', a reply dict, 'stale+ok',
    or a (reply dict, [raw frames]) pair for a reply that carries arrays."""

    def __init__(self, script: list) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"inproc://scripted-{id(self)}"
        self.sock.bind(self.endpoint)
        self.script = list(script)
        self.seen: list[dict] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        stale_id = None
        while self.script and self.sock.poll(10_000):
            frames = self.sock.recv_multipart()
            ident, header = frames[0], json.loads(frames[1])
            self.seen.append(header)
            action = self.script.pop(0)
            if isinstance(action, tuple):
                head, raw = action
                self.sock.send_multipart([ident, protocol.dumps({**head, "id": header["id"]}), *raw])
                continue
            if action == "drop":
                stale_id = header["id"]
                continue
            if action == "stale+ok" and stale_id is not None:
                self.sock.send_multipart([ident, protocol.dumps({"v": 1, "id": stale_id, "ok": True, "stale": True})])
            reply = {"v": 1, "id": header["id"], "ok": True} if action in ("ok", "stale+ok") else {**action,
                                                                                                  "id": header["id"]}
            self.sock.send_multipart([ident, protocol.dumps(reply)])

    def close(self) -> None:
        self.thread.join(20)
        self.sock.close()


@pytest.fixture
def server_factory() -> Iterator:
    servers = []

    def make(script):
        s = ScriptedServer(script)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_timeout_raises_typed_error_and_the_next_call_works(server_factory):
    s = server_factory(["drop", "ok"])
    c = Client(s.endpoint, timeout=0.2, context=s.ctx)
    with pytest.raises(TransportError) as info:
        c.health()
    assert info.value.code is ErrorCode.TIMEOUT and info.value.exit_status == 8
    assert c.health()["ok"] is True  # a fresh socket: no wedge
    c.close()


def test_stale_replies_are_skipped_by_id(server_factory):
    s = server_factory(["ok", "stale+ok"])
    c = Client(s.endpoint, timeout=5, context=s.ctx)
    c.health()
    head = c.health()
    assert "stale" not in head  # the reply to another id was ignored
    c.close()


def test_throttled_is_typed_and_retry_is_opt_in(server_factory, monkeypatch):
    throttle = {"v": 1, "ok": False, "error": {"code": "THROTTLED", "message": "slow down", "retry_after_ms": 7}}
    x = np.zeros((1, 2), np.float32)
    y = np.array([[0.25, 0.75]], np.float32)
    ok = ({"v": 1, "ok": True, "model": "m", "version": "v1", "outputs": [protocol.tensor_meta(y, "y")]},
          [y.tobytes()])
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # the client's back-off, recorded instead of slept
    s = server_factory([throttle, throttle, ok])
    c = Client(s.endpoint, timeout=5, context=s.ctx)
    with pytest.raises(Throttled) as info:  # no retry unless asked for
        c.predict(x)
    assert info.value.retry_after_ms == 7 and slept == []
    # Opted in: the client waits retry_after_ms, sends again, and returns the answer to the retry.
    r = c.predict(x, retry_throttled=3)
    assert (r.model, r.version) == ("m", "v1")
    np.testing.assert_array_equal(r.outputs[0], y)
    assert slept == [0.007]
    assert len(s.seen) == 3 and s.seen[1]["inputs"] == s.seen[2]["inputs"] == [{"dtype": "float32", "shape": [1, 2]}]
    c.close()


def test_request_header_shape(server_factory):
    s = server_factory([{"v": 1, "ok": True, "outputs": []}])
    c = Client(s.endpoint, timeout=5, context=s.ctx)
    c.predict({"image": np.ones((1, 3), np.uint8)}, model="digits", deadline_ms=50, priority="high", top_k=2)
    h = s.seen[0]
    assert h["op"] == "predict" and h["model"] == "digits" and h["deadline_ms"] == 50 and h["priority"] == "high"
    assert h["top_k"] == 2 and h["inputs"] == [{"name": "image", "dtype": "uint8", "shape": [1, 3]}]
    c.close()


def test_default_endpoints_fall_back_to_the_system_daemon(tmp_path, monkeypatch):
    from edged.client import default_control_endpoint, default_endpoint

    for var in ("EDGED_ENDPOINT", "EDGED_CONTROL_ENDPOINT", "RUNTIME_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    system = tmp_path / "run-edged"
    own = tmp_path / "xdg" / "edged"
    # nothing running anywhere: the user's own default, as before
    assert default_endpoint(str(system)) == f"ipc://{own}/edged.sock"
    # only the systemd daemon's sockets exist (sudo edged ctl status, an app of another user)
    system.mkdir()
    (system / "edged.sock").touch()
    (system / "control.sock").touch()
    assert default_endpoint(str(system)) == f"ipc://{system}/edged.sock"
    assert default_control_endpoint(str(system)) == f"ipc://{system}/control.sock"
    # a daemon of the user's own wins
    own.mkdir(parents=True)
    (own / "control.sock").touch()
    assert default_control_endpoint(str(system)) == f"ipc://{own}/control.sock"
    # and the environment wins over both
    monkeypatch.setenv("EDGED_CONTROL_ENDPOINT", "ipc:///elsewhere.sock")
    assert default_control_endpoint(str(system)) == "ipc:///elsewhere.sock"


def test_default_events_endpoint_is_beside_the_control_socket(tmp_path, monkeypatch):
    from edged.client import default_events_endpoint

    for var in ("EDGED_EVENTS_ENDPOINT", "EDGED_CONTROL_ENDPOINT", "RUNTIME_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    (tmp_path / "xdg/edged").mkdir(parents=True)
    (tmp_path / "xdg/edged/control.sock").touch()  # the user's own daemon: wins over a system one in /run/edged
    assert default_events_endpoint() == f"ipc://{tmp_path}/xdg/edged/events.sock"  # beside the default control
    assert default_events_endpoint("ipc:///srv/edged/c.sock") == "ipc:///srv/edged/events.sock"
    monkeypatch.setenv("EDGED_CONTROL_ENDPOINT", "ipc:///elsewhere/control.sock")
    assert default_events_endpoint() == "ipc:///elsewhere/events.sock"
    with pytest.raises(TransportError, match="give --events-endpoint") as err:
        default_events_endpoint("tcp://10.0.0.2:5556")  # no directory beside a tcp endpoint
    assert err.value.code is ErrorCode.NOT_RUNNING
    monkeypatch.setenv("EDGED_EVENTS_ENDPOINT", "tcp://10.0.0.2:5557")  # the environment wins over all
    assert default_events_endpoint("tcp://10.0.0.2:5556") == "tcp://10.0.0.2:5557"
