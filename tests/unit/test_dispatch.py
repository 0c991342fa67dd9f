"""edged.server.dispatch: the one door from a request to a command, and to its wire error."""

from __future__ import annotations

import json
from typing import Any

import pytest
import zmq

from edged import config as config_mod
from edged import errors
from edged.seams import FakeClock
from edged.server.api import Request
from edged.server.daemon import Daemon
from edged.server.dispatch import dispatch
from edged.states import DaemonState


class FakeDaemon:
    """The DaemonAPI members the commands below touch; anything that would run or change a model fails."""

    def __init__(self, state: DaemonState) -> None:
        self.state = state
        self.replies: list[dict[str, Any]] = []

    def reply(self, req: Request, header: dict[str, Any], arrays: list[Any] | None = None) -> None:
        self.replies.append(header)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "state": self.state.value}

    def submit_predict(self, req: Request) -> None:
        pytest.fail("a predict was admitted during the drain")

    def run_repository_op(self, req: Request, kind: str, **kw: Any) -> None:
        pytest.fail("a swap was started during the drain")


PREDICT = {"op": "predict", "inputs": [{"dtype": "float32", "shape": [1]}]}


def call(daemon: FakeDaemon, endpoint: str, header: dict[str, Any], frames: int = 0) -> dict[str, Any]:
    dispatch(daemon, Request(endpoint, [b"peer"], {"v": 1, "id": 7, **header}, [b"\0" * 4] * frames, 0.0))
    return daemon.replies[-1]


def test_a_drain_refuses_everything_on_the_predict_socket_with_the_code_clients_retry_on():
    daemon = FakeDaemon(DaemonState.DRAINING)
    for header, frames in ((PREDICT, 1), ({"op": "health"}, 0), ({"op": "info"}, 0)):
        reply = call(daemon, "predict", header, frames)
        assert reply["id"] == 7 and reply["op"] == header["op"], reply
        assert reply["error"]["code"] == "SHUTTING_DOWN" and "daemon is shutting down" in reply["error"]["message"]
        assert type(errors.from_wire(reply["error"])) is errors.RetryableError  # what the client retries on


def test_a_drain_still_answers_control_calls_that_neither_run_nor_change_a_model():
    daemon = FakeDaemon(DaemonState.DRAINING)
    assert call(daemon, "control", {"op": "health"}) == {"status": "ok", "state": "draining"}
    assert call(daemon, "control", {"op": "swap", "version": "v2"})["error"]["code"] == "SHUTTING_DOWN"


def test_a_malformed_request_is_told_what_is_wrong_even_during_a_drain():
    # Retrying a request that cannot validate never helps: it is refused for what it is.
    daemon = FakeDaemon(DaemonState.DRAINING)
    assert call(daemon, "predict", {"op": "predict", "inputs": []})["error"]["code"] == "BAD_REQUEST"
    assert call(daemon, "predict", {"op": "swap"})["error"]["code"] == "UNKNOWN_OP"


@pytest.mark.parametrize("wait", ["false", 0, 1, None, [], {}])
def test_wait_must_be_a_json_boolean_so_a_string_false_never_means_true(wait):
    reply = call(FakeDaemon(DaemonState.RUNNING), "predict", {**PREDICT, "wait": wait}, frames=1)
    assert reply["error"]["code"] == "BAD_REQUEST" and "'wait'" in reply["error"]["message"]


def test_a_running_daemon_admits_the_predict():
    admitted = []
    daemon = FakeDaemon(DaemonState.RUNNING)
    daemon.submit_predict = lambda req: admitted.append(req.id)  # type: ignore[method-assign]
    dispatch(daemon, Request("predict", [b"peer"], {"v": 1, "id": 7, **PREDICT}, [b"\0" * 4], 0.0))
    assert admitted == [7] and daemon.replies == []


def test_the_daemons_read_path_refuses_a_predict_during_a_drain_through_dispatch(tmp_path, monkeypatch):
    d = Daemon(config_mod.load(None, {"repository.path": str(tmp_path)}), clock=FakeClock())
    try:
        replies: list[dict[str, Any]] = []
        monkeypatch.setattr(d, "reply", lambda req, header, arrays=None: replies.append(header))
        monkeypatch.setattr(d, "submit_predict", lambda req: pytest.fail("admitted during the drain"))
        d.state = DaemonState.DRAINING
        header = json.dumps({"v": 1, "id": 7, **PREDICT}).encode()
        d._handle("predict", [zmq.Frame(b"peer"), zmq.Frame(header), zmq.Frame(b"\0" * 4)])
        (reply,) = replies
        assert reply["id"] == 7 and reply["error"]["code"] == "SHUTTING_DOWN"
    finally:
        d.close(graceful=False)
