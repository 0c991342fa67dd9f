"""End to end: a real ``edged serve`` subprocess, the real client and the real CLI."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import zmq

from edged import protocol
from edged.errors import ErrorCode, NotFoundError, RequestError
from edged.runtime.model import LoadedModel, LoadSpec
from edged.testing import tflite_build as tb

pytestmark = [pytest.mark.e2e, pytest.mark.runtime]


def golden_inputs(repo: Path) -> list[np.ndarray]:
    version = repo / "digits" / "v1"
    manifest = json.loads((version / "manifest.json").read_text())
    return [np.load(version / g["input"]) for g in manifest["golden"]]


def raw_call(endpoint: str, frames: list[bytes], timeout_ms: int = 10_000) -> list[bytes]:
    """Send arbitrary frames with a bare DEALER: for malformed requests the client would refuse to build."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        assert sock.poll(timeout_ms), "no reply"
        return sock.recv_multipart()
    finally:
        sock.close()


def error_code(reply: list[bytes]) -> str:
    header = json.loads(reply[0])
    assert header["ok"] is False
    return header["error"]["code"]


def test_outputs_are_bit_identical_to_an_in_process_interpreter(daemon, repo, backend):
    local = LoadedModel.load(LoadSpec("digits", "v1", repo / "digits" / "v1", backend, workers=1))
    rng = np.random.default_rng(7)
    inputs = golden_inputs(repo) + [rng.uniform(0, 16, (1, 8, 8, 1)).astype(np.float32) for _ in range(5)]
    with daemon.client() as c:
        for x in inputs:
            r = c.predict(x)
            expected = local.run([x]).outputs
            assert len(r.outputs) == len(expected)
            for got, want in zip(r.outputs, expected):
                assert got.dtype == want.dtype and got.shape == want.shape
                assert got.tobytes() == want.tobytes()
            assert (r.model, r.version) == ("digits", "v1")
            assert r.delegate in ("xnnpack", "cpu") and r.runtime
            assert set(r.timing) == {"queue_us", "invoke_us", "total_us"}


def test_named_inputs_list_inputs_and_top_k(daemon, repo):
    x = golden_inputs(repo)[0]
    with daemon.client() as c:
        info = c.info()["models"][0]
        name = info["inputs"][0]["name"]
        a = c.predict({name: x}, top_k=3)
        b = c.predict([x])
    assert a.outputs[0].tobytes() == b.outputs[0].tobytes()
    assert len(a.top_k) == 3 and a.top_k[0]["label"] == str(int(np.argmax(a.outputs[0])))
    assert a.top_k[0]["score"] >= a.top_k[1]["score"] >= a.top_k[2]["score"]


def digit_png(digit_pixels: np.ndarray) -> bytes:
    from PIL import Image

    # Dark ink on white paper, as a camera or a scan would give it.
    img = Image.fromarray((255 - digit_pixels.reshape(8, 8) * 255 / 16).astype(np.uint8), "L").resize((64, 64))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_image_input_is_decoded_and_classified(daemon, repo):
    x = golden_inputs(repo)[0]
    with daemon.client() as c:
        tensor = c.predict(x, top_k=1)
        image = c.predict_image(digit_png(x), top_k=1)
    assert image.top_k[0]["label"] == tensor.top_k[0]["label"]


def test_every_bad_input_gets_its_code_and_the_next_request_succeeds(daemon_factory, repo, tmp_path):
    cfg = tmp_path / "edged.toml"
    cfg.write_text("[server]\nmax_message_bytes = 1048576\nmax_image_pixels = 1000000\nmax_header_bytes = 4096\n")
    d = daemon_factory(repo, "--config", str(cfg))
    good = golden_inputs(repo)[0]
    ok_header = {"v": 1, "id": "g", "op": "predict", "inputs": [protocol.tensor_meta(good)]}

    def predict_header(**kw):
        return json.dumps({**ok_header, **kw}).encode()

    from PIL import Image

    bomb = io.BytesIO()
    Image.new("L", (4000, 4000)).save(bomb, format="PNG")
    cases = [
        ([b"\xff\x00garbage"], "BAD_REQUEST"),
        ([b'["not", "an", "object"]'], "BAD_REQUEST"),
        ([b'{"id": "x", "op": "predict"}'], "UNSUPPORTED_PROTOCOL"),
        ([json.dumps({"v": 1, "id": "x", "op": "info", "pad": "x" * 5000}).encode()], "TOO_LARGE"),
        ([json.dumps({"v": 1, "id": "x", "op": "explode"}).encode()], "UNKNOWN_OP"),
        ([json.dumps({"v": 1, "id": "x", "op": "status"}).encode()], "UNKNOWN_OP"),  # control-only op
        ([predict_header()], "BAD_REQUEST"),  # descriptor without its frame
        ([predict_header(model="nope"), good.tobytes()], "UNKNOWN_MODEL"),
        ([predict_header(inputs=[{"dtype": "float64", "shape": [1, 8, 8, 1]}]),
          good.astype(np.float64).tobytes()], "BAD_DTYPE"),
        ([predict_header(inputs=[{"dtype": "float32", "shape": [1, 64]}]), good.tobytes()], "BAD_SHAPE"),
        ([predict_header(), good.tobytes()[:-4]], "BAD_SIZE"),
        ([predict_header(inputs=[{"dtype": "float32", "shape": [1, 8, 8, 1]}, {"dtype": "float32", "shape": [1]}]),
          good.tobytes(), b"\0\0\0\0"], "BAD_REQUEST"),
        ([predict_header(inputs=[{"encoding": "image"}]), b"\x89PNG\r\n\x1a\nnope"], "BAD_IMAGE"),
        ([predict_header(inputs=[{"encoding": "image"}]), bomb.getvalue()], "BAD_IMAGE"),
        ([predict_header(), b"\0" * (2 * 1024 * 1024)], "TOO_LARGE"),
        ([predict_header(top_k="three"), good.tobytes()], "BAD_REQUEST"),
        ([predict_header(priority="urgent"), good.tobytes()], "BAD_REQUEST"),
    ]
    with d.client() as c:
        for frames, code in cases:
            assert error_code(raw_call(d.endpoint, frames)) == code, frames[0][:120]
            r = c.predict(good)  # the daemon keeps serving
            assert r.version == "v1"
    # An error found by the worker names the version that found it, like a success would.
    head = json.loads(raw_call(d.endpoint, [predict_header(), good.tobytes()[:-4]])[0])
    assert (head["error"]["code"], head["model"], head["version"]) == ("BAD_SIZE", "digits", "v1")
    # REQ sockets work too (the daemon echoes the empty delimiter).
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.endpoint)
    sock.send_multipart([json.dumps(ok_header).encode(), good.tobytes()])
    assert sock.poll(10_000)
    reply = sock.recv_multipart()
    sock.close()
    assert json.loads(reply[0])["ok"] is True and len(reply) == 2


def test_typed_errors_in_the_client(daemon, repo):
    with daemon.client() as c:
        with pytest.raises(NotFoundError):
            c.predict(golden_inputs(repo)[0], model="missing")
        with pytest.raises(RequestError) as info:
            c.predict(np.zeros((1, 8, 8, 1), np.int32))
        assert info.value.code is ErrorCode.BAD_DTYPE


def sigterm_with_requests_queued(daemon, x: np.ndarray, n: int) -> list[dict]:
    """Pipeline ``n`` predicts, SIGTERM once the daemon has read them all, collect every reply; it exits 0.

    A ``health`` request sent after the predicts on the same connection marks the end:
    the main loop reads one connection's messages in order and answers ``health``
    itself, so its reply proves every predict before it is inside the daemon (queued,
    running or answered), whatever the machine's load.
    """
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.endpoint)
    header = {"v": 1, "op": "predict", "inputs": [protocol.tensor_meta(x)]}
    for i in range(n):
        sock.send_multipart([json.dumps({**header, "id": i}).encode(), x.tobytes()])
    sock.send_multipart([json.dumps({"v": 1, "op": "health", "id": "marker"}).encode()])
    replies = []
    while True:
        assert sock.poll(30_000), "no reply within 30 s"
        reply = json.loads(sock.recv_multipart()[0])
        if reply["id"] == "marker":
            break
        replies.append(reply)
    daemon.send_signal(signal.SIGTERM)
    while len(replies) < n and sock.poll(30_000):
        replies.append(json.loads(sock.recv_multipart()[0]))
    sock.close()
    assert daemon.stop(sig=None) == 0
    return replies


def test_sigterm_with_requests_in_flight_answers_them_all_and_exits_0(daemon, repo, sockdir):
    n = 60
    replies = sigterm_with_requests_queued(daemon, golden_inputs(repo)[0], n)
    assert sorted(r["id"] for r in replies) == list(range(n)), "every request got an answer"
    outcomes = {r["ok"] or r["error"]["code"] for r in replies}
    assert outcomes <= {True, "SHUTTING_DOWN"} and True in outcomes
    assert not (sockdir / "p.sock").exists() and not (sockdir / "c.sock").exists(), "ipc files removed"


def test_requests_not_started_when_the_grace_period_ends_are_answered_shutting_down(daemon_factory, tmp_path):
    from tests.e2e.repohelpers import publish

    repo = tmp_path / "slow-repo"
    # ~40-100 ms per invoke: 20 of them cannot all finish between the marker's reply and SIGTERM.
    publish(repo, "v1", tb.slow_model(size=256, depth=16), tmp=tmp_path)
    d = daemon_factory(repo, "--workers", "1", "--set", "server.grace_period_s=0")
    n = 20
    replies = sigterm_with_requests_queued(d, np.zeros((1, 8, 8, 1), np.float32), n)
    assert sorted(r["id"] for r in replies) == list(range(n)), "every request got an answer, none was dropped"
    codes = [r["ok"] or r["error"]["code"] for r in replies]
    assert set(codes) <= {True, "SHUTTING_DOWN"} and "SHUTTING_DOWN" in codes
    assert "daemon stopped before this request could run" in json.dumps(replies)


def test_ctl_quit_is_the_same_as_sigterm(daemon):
    r = daemon.cli("ctl", "quit", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stopping"] is True
    assert daemon.proc.wait(60) == 0


def test_cli_commands_and_json(daemon, repo, tmp_path):
    x = golden_inputs(repo)[0]
    npy = tmp_path / "x.npy"
    np.save(npy, x)
    r = daemon.cli("predict", "--json", str(npy))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"] == "digits" and out["version"] == "v1" and len(out["top_k"]) == 5
    r = daemon.cli("predict", str(npy))
    assert r.returncode == 0 and "digits/v1" in r.stdout
    png = tmp_path / "x.png"
    png.write_bytes(digit_png(x))
    r = daemon.cli("predict", "--top", "1", "--json", str(png))
    assert r.returncode == 0 and json.loads(r.stdout)["top_k"][0]["label"] == out["top_k"][0]["label"]
    r = daemon.cli("info", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["models"][0]["inputs"][0]["shape"] == [1, 8, 8, 1]
    r = daemon.cli("ctl", "status", "--json")
    status = json.loads(r.stdout)
    assert r.returncode == 0 and status["state"] == "running" and status["models"][0]["version"] == "v1"
    r = daemon.cli("ctl", "status")
    assert r.returncode == 0 and "digits: v1" in r.stdout
    r = daemon.cli("health")
    assert r.returncode == 0 and r.stdout.startswith("ok")
    r = daemon.cli("predict", "--model", "nope", str(npy))
    assert r.returncode == 4 and "UNKNOWN_MODEL" in r.stderr
    nobody = daemon.endpoint.rsplit("/", 1)[0] + "/nobody-here.sock"  # a safe directory, nobody listening
    r = daemon.cli("predict", "--endpoint", nobody, "--timeout", "0.5", str(npy))
    assert r.returncode == 8 and "NOT_RUNNING" in r.stderr  # no socket file: at once, not after the timeout


def test_second_daemon_on_the_same_endpoint_is_refused(daemon, daemon_factory, repo):
    other = daemon_factory(repo, ready=False)  # same sockets dir, so the same endpoints
    assert other.endpoint == daemon.endpoint
    assert other.proc.wait(60) != 0
    assert "already serving" in other.log()
    with daemon.client() as c:  # the first one is untouched
        assert c.health()["status"] == "ok"


def test_explicit_edgetpu_without_the_library_is_a_clear_startup_error(daemon_factory, repo):
    # The version offers a compiled model, but this machine has no libedgetpu.so.1.
    (repo / "digits" / "v1" / "model_edgetpu.tflite").write_bytes((repo / "digits" / "v1" / "model.tflite").read_bytes())
    d = daemon_factory(repo, "--delegate", "edgetpu", ready=False)
    assert d.proc.wait(60) == 6
    assert "delegate = 'edgetpu' but cannot load Edge TPU delegate libedgetpu.so.1" in d.log()


def test_auto_delegate_falls_back_from_edgetpu_with_the_reason_logged(daemon_factory, repo):
    (repo / "digits" / "v1" / "model_edgetpu.tflite").write_bytes((repo / "digits" / "v1" / "model.tflite").read_bytes())
    d = daemon_factory(repo)
    with d.client() as c:
        assert c.predict(golden_inputs(repo)[0]).delegate == "xnnpack"
    assert "edgetpu skipped: cannot load Edge TPU delegate libedgetpu.so.1" in d.log()
