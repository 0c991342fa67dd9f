"""Frigate's zmq detector plugin against a real daemon (edged/server/frigate.py, docs/frigate.md).

The client (tests/e2e/frigate_client.py) is Frigate's plugin: REQ, RCVTIMEO 200 ms,
the model hand-shake, two-frame requests, socket reset on a timeout.  On a loaded machine
200 ms is not a bound, so these tests, which are about something other than latency, use
``patient()`` and ``start()``: no frame is lost or answered empty for being late, and a
frame edged never answers is still a timeout, which each test asserts there was none of.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from edged import protocol
from edged.repository.pack import pack
from edged.testing import tflite_build as tb
from tests.e2e.frigate_client import HANDSHAKE_TIMEOUT_MS, FrigateZmqClient, frigate_tflite_detect_raw
from tests.e2e.repohelpers import publish, state_of, wait_until
from tests.e2e.test_power import power_config, write_sensor
from tests.e2e.test_security import free_port, keys  # noqa: F401 - keys is a fixture

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
ZOO_DETECTOR = ROOT / "zoo" / "detector" / "v1"
SIZE = 320
#: The largest ``frigate.budget_ms`` allowed (edged/config.py): a frame is run however long it
#: waited for a worker, instead of being answered "no detections" for this machine's load.
PATIENT_BUDGET_MS = 10_000
PATIENT = ("--set", f"frigate.budget_ms={PATIENT_BUDGET_MS}")


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """Black images with whole and partial colour squares in random cells (0..n detections each)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.zeros((1, SIZE, SIZE, 3), np.uint8)
        for _ in range(rng.integers(0, 6)):
            r, c, ch = rng.integers(0, 8), rng.integers(0, 8), rng.integers(0, 3)
            fill = rng.integers(10, 41)  # rows of the 40-row cell: partial cells score around the threshold
            img[0, 40 * r:40 * r + fill, 40 * c:40 * c + 40, ch] = 255
        out.append(img)
    return out


def in_process(model_file: Path, image: np.ndarray) -> np.ndarray:
    """The same model run here, read with Frigate's own rule."""
    runtime = os.environ.get("EDGED_RUNTIME", "auto")
    module = "tflite_runtime.interpreter" if runtime == "tflite-runtime" else "ai_edge_litert.interpreter"
    it = importlib.import_module(module).Interpreter(model_path=str(model_file))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], image)
    it.invoke()
    return frigate_tflite_detect_raw([it.get_tensor(d["index"]) for d in it.get_output_details()])


@pytest.fixture
def det_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(ZOO_DETECTOR, repo / "detector" / "v1")
    return repo


def start(daemon_factory, sockdir: Path, repo: Path, *args: str, default_budget: bool = False):
    """A daemon answering Frigate, with ``PATIENT_BUDGET_MS`` unless ``default_budget`` (150 ms)."""
    endpoint = f"ipc://{sockdir}/frigate/zmq_detector"
    d = daemon_factory(repo, "--frigate-endpoint", endpoint, *(() if default_budget else PATIENT), *args)
    return d, endpoint


def patient(endpoint: str, model_path: str, **kwargs: Any) -> FrigateZmqClient:
    """Frigate's client, waiting for a frame as long as Frigate waits for its hand-shake (30 s)."""
    return FrigateZmqClient(endpoint, model_path, request_timeout_ms=HANDSHAKE_TIMEOUT_MS, **kwargs)


def stats(d) -> dict:
    with d.control() as ctl:
        return ctl.stats()["stats"]


def test_frames_equal_in_process_computation_with_frigates_rule(daemon_factory, sockdir, det_repo):
    d, endpoint = start(daemon_factory, sockdir, det_repo)
    with patient(endpoint, "/config/model_cache/ssd_mobiledet.tflite") as client:
        assert client.model_ready, client.errors
        images = frames(12)
        got = [client.detect_raw(img) for img in images]
        assert client.timeouts == 0 and not client.errors
    want = [in_process(ZOO_DETECTOR / "model.tflite", img) for img in images]
    assert sum(int(np.count_nonzero(w[:, 1])) for w in want) > 5, "the frames should hold detections"
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-6)
    assert "Frigate model 'ssd_mobiledet.tflite' is answered by edged model detector" in d.log()
    assert json.loads(d.cli("ctl", "status", "--json").stdout)["endpoints"]["frigate"] == endpoint
    m = stats(d)["models"][0]
    assert (m["model"], m["version"], m["requests"]) == ("detector", "v1", 12)


def test_hot_swap_at_10_fps_answers_every_frame_with_v1_then_v2(daemon_factory, sockdir, det_repo, tmp_path):
    """A swap under a steady 10 fps: every frame is answered with its detection, by v1 until the
    swap and by v2 from then on.

    What is tested is the swap, not this machine's latency (another session's test suite may
    be loading it): the client waits up to 30 s, as Frigate does for its hand-shake, instead of
    Frigate's 200 ms, and ``budget_ms`` is the largest allowed, so no frame is answered empty
    for being late.  A frame edged never answered is still a timeout, and fails the test (a
    retry would hide it).
    """
    d, endpoint = start(daemon_factory, sockdir, det_repo)
    half_green = _half_green()  # scores ~0.50 on v1 (gain 1/32), ~0.98 on v2 (gain 1/16)
    stop = threading.Event()
    scores: list[float] = []
    with patient(endpoint, "/config/model.tflite") as client:
        assert client.model_ready, client.errors

        def send() -> None:
            while not stop.is_set():
                scores.append(float(client.detect_raw(half_green)[0, 1]))
                stop.wait(0.1)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            wait_until(lambda: len(scores) >= 5, "frames before the swap", daemon=d)
            src = tmp_path / "v2.tflite"
            src.write_bytes(tb.ssd_detector_model(gain=1 / 16))
            pack(src, name="detector", version="v2", repo=det_repo, runtime=os.environ.get("EDGED_RUNTIME", "auto"))
            # Watch the replies, not `edged ctl` (a CLI process every 50 ms would load this 2-core box
            # more than the swap does): v2 finds the half cell with ~0.98.
            wait_until(lambda: scores[-1] > 0.95, "replies from v2", timeout=120, daemon=d)
            seen = len(scores)
            wait_until(lambda: len(scores) >= seen + 5, "frames after the swap", daemon=d)
        finally:
            stop.set()
            sender.join(timeout=60)
        assert not sender.is_alive()
        assert client.timeouts == 0, f"{client.timeouts} frame(s) never answered within 30 s"
        assert not client.errors
    assert state_of(d, "v2", "detector")["state"] == "probation"
    swap = next(i for i, s in enumerate(scores) if s > 0.95)
    assert swap >= 5 and len(scores) - swap >= 5, scores
    assert all(s == pytest.approx(0.496, abs=0.01) for s in scores[:swap]), f"v1 until the swap: {scores}"
    assert all(s > 0.95 for s in scores[swap:]), f"v2 from the swap on, never back: {scores}"
    # edged's own count agrees: each frame was run once, by the version its score says.
    counted = stats(d)
    assert {m["version"]: m["requests"] for m in counted["models"]} == {"v1": swap, "v2": len(scores) - swap}
    assert counted["frigate_dropped"] == {}


def test_throttling_profile_answers_empty_at_once_and_counts(daemon_factory, sockdir, det_repo, tmp_path):
    sensor = tmp_path / "ups.json"
    write_sensor(sensor, battery_percent=90, on_ac=True)
    # The budget is what is tested: the profile's rate would delay a frame past the default 150 ms.
    d, endpoint = start(daemon_factory, sockdir, det_repo, "--config", str(power_config(tmp_path, sensor)),
                        default_budget=True)
    r = d.cli("ctl", "power", "--profile", "critical", "--for", "10m")  # max_rps 2, duty cycle 0.25
    assert r.returncode == 0, r.stderr
    image = frames(1)[0]
    image[0, 0:40, 0:40, 0] = 255
    # How soon a served frame comes back is this machine's load, so the client is patient; a frame
    # refused is still told from one the governor waited for: empty and counted, not detected.
    with patient(endpoint, "/config/model.tflite") as client:
        assert client.model_ready, client.errors
        got = [client.detect_raw(image) for _ in range(30)]  # back to back: ~15x the profile's rate
        assert client.timeouts == 0 and not client.errors
    empty = sum(1 for g in got if not g.any())
    assert empty >= 10, f"only {empty} of 30 frames were refused at 2 frames/s"
    assert any(g.any() for g in got), "frames within the rate are still answered"
    dropped = stats(d)["frigate_dropped"]
    assert sum(dropped.get(k, 0) for k in ("budget", "throttled")) == empty, dropped
    prom = d.cli("ctl", "stats", "--prometheus").stdout
    assert 'edged_frigate_dropped_total{reason="budget"}' in prom or \
        'edged_frigate_dropped_total{reason="throttled"}' in prom


def test_wrong_shape_dtype_and_unknown_model_type_are_answered_and_logged_once(daemon_factory, sockdir, det_repo):
    d, endpoint = start(daemon_factory, sockdir, det_repo)
    good = frames(1)[0]
    good[0, 0:40, 0:40, 0] = 255
    with patient(endpoint, "/config/model.tflite") as client:
        for _ in range(3):
            assert not client.detect_raw(np.zeros((1, 300, 300, 3), np.uint8)).any()
            assert not client.detect_raw(np.zeros((1, SIZE, SIZE, 3), np.float32)).any()
        assert client.detect_raw(good).any(), "a good frame after bad ones is served"
        assert client.model_ready and client.timeouts == 0, client.errors
    with patient(endpoint, "/config/model.tflite", model_type="yolox") as client:
        for _ in range(3):
            assert not client.detect_raw(good).any()
        assert client.timeouts == 0 and not client.errors
    log = d.log()
    assert log.count("Frigate sends uint8[1, 300, 300, 3], detector/v1 takes uint8[1, 320, 320, 3]") == 1, log
    assert log.count("Frigate sends float32[1, 320, 320, 3]") == 1, log
    assert log.count("model_type 'yolox' is not supported") == 1, log
    assert stats(d)["frigate_dropped"] == {"input": 6, "model_type": 3}


def test_a_frame_over_max_message_bytes_is_answered_empty_and_logged_once(daemon_factory, sockdir, det_repo):
    # 307 200 bytes of tensor: over the limit, under libzmq's MAXMSGSIZE (4x), so edged reads it.
    d, endpoint = start(daemon_factory, sockdir, det_repo, "--set", "server.max_message_bytes=200000")
    image = frames(1)[0]
    image[0, 0:40, 0:40, 0] = 255  # served, this frame has a detection
    with patient(endpoint, "/config/model.tflite") as client:
        assert client.model_ready, client.errors
        for _ in range(3):
            assert not client.detect_raw(image).any()
        assert client.timeouts == 0 and not client.errors
    log = d.log()
    assert log.count("no detections (input): message is 307") == 1, log
    assert "limit 200000 (server.max_message_bytes)" in log and "Traceback" not in log
    counted = stats(d)
    assert counted["frigate_dropped"] == {"input": 3}
    assert counted["models"] == [], "refused before it became a predict"


def test_a_frame_during_a_drain_is_answered_empty_at_once_and_never_run(daemon_factory, sockdir, det_repo, tmp_path):
    # ~40-100 ms per invoke of "m" on one worker: its queue keeps the drain going for seconds.
    publish(det_repo, "v1", tb.slow_model(size=256, depth=16), tmp=tmp_path)
    endpoint = f"ipc://{sockdir}/frigate/zmq_detector"
    cfg = tmp_path / "edged.toml"
    # A budget no busy machine reaches: every frame is either run or refused on arrival.
    cfg.write_text(f'[frigate]\nendpoint = "{endpoint}"\nmodel = "detector"\nbudget_ms = {PATIENT_BUDGET_MS}\n')
    d = daemon_factory(det_repo, "--workers", "1", "--config", str(cfg))
    image = frames(1)[0]
    image[0, 0:40, 0:40, 0] = 255  # run, this frame has a detection
    ctx = zmq.Context.instance()
    pred, ctl = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for sock, where in ((pred, d.endpoint), (ctl, d.control_endpoint)):
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(where)
    x = np.zeros((1, 8, 8, 1), np.float32)
    try:
        with patient(endpoint, "/config/model.tflite") as client:
            assert client.detect_raw(image).any(), "served before the stop"
            head = {"v": 1, "op": "predict", "model": "m", "inputs": [protocol.tensor_meta(x)]}
            for i in range(30):
                pred.send_multipart([json.dumps({**head, "id": i}).encode(), x.tobytes()])
            # health is answered by the main loop once it has read every predict before it.
            pred.send_multipart([json.dumps({"v": 1, "op": "health", "id": "marker"}).encode()])
            replies = []
            while not replies or replies[-1]["id"] != "marker":
                assert pred.poll(60_000), "no reply within 60 s"
                replies.append(json.loads(pred.recv_multipart()[0]))
            ctl.send_multipart([json.dumps({"v": 1, "id": "q", "op": "quit"}).encode()])
            assert ctl.poll(60_000) and json.loads(ctl.recv_multipart()[0])["stopping"]
            for _ in range(3):  # the predicts still queued keep the daemon draining
                assert not client.detect_raw(image).any()
            assert client.timeouts == 0 and not client.errors
        while len(replies) < 31 and pred.poll(60_000):
            replies.append(json.loads(pred.recv_multipart()[0]))
    finally:
        pred.close()
        ctl.close()
    assert d.stop(sig=None) == 0
    assert len(replies) == 31, "the drain went on after the frames: every predict was answered"
    log = d.log()
    assert log.count("Frigate frame answered with no detections (shutting_down)") == 1, log
    assert "Traceback" not in log


def test_pushed_model_is_refused_by_default_and_serving_is_untouched(daemon_factory, sockdir, det_repo, tmp_path):
    d, endpoint = start(daemon_factory, sockdir, det_repo)
    pushed = tmp_path / "frigate_model.tflite"
    pushed.write_bytes(tb.ssd_detector_model(gain=1 / 16))
    with FrigateZmqClient(endpoint, str(pushed)) as client:
        assert client.send_model_data() is False
        assert client.last_push == {"model_saved": False, "model_loaded": False}
    assert [v["version"] for v in json.loads(d.cli("ctl", "versions", "--json").stdout)["versions"]] == ["v1"]
    assert "refused (frigate.accept_pushed_models is false)" in d.log()


def test_pushed_model_goes_through_validation_when_accepted(daemon_factory, sockdir, det_repo, tmp_path):
    d, endpoint = start(daemon_factory, sockdir, det_repo, "--set", "frigate.accept_pushed_models=true")
    pushed = tmp_path / "frigate_model.tflite"
    pushed.write_bytes(tb.ssd_detector_model(gain=1 / 16))
    wrong = tmp_path / "other.tflite"
    wrong.write_bytes(tb.random_classifier())  # another contract: validation refuses it
    with FrigateZmqClient(endpoint, str(wrong)) as client:
        assert client.send_model_data() is False
        assert client.last_push == {"model_saved": True, "model_loaded": False}
    assert state_of(d, "v1", "detector")["state"] != "bad"
    with patient(endpoint, str(pushed)) as client:
        assert client.send_model_data() is True
        assert client.last_push == {"model_saved": True, "model_loaded": True}
        wait_until(lambda: client.detect_raw(_half_green())[0, 1] > 0.95, "the pushed version serving", daemon=d)
        assert client.timeouts == 0 and not client.errors
    assert state_of(d, "v3", "detector")["state"] in ("probation", "committed")


def _half_green() -> np.ndarray:
    img = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    img[0, 0:20, 280:320, 1] = 255
    return img


def test_frigate_socket_is_off_unless_configured(daemon_factory, sockdir, det_repo):
    d = daemon_factory(det_repo)
    assert not list(sockdir.glob("**/zmq_detector"))
    status = json.loads(d.cli("ctl", "status", "--json").stdout)
    assert status["state"] == "running" and "frigate" not in status["endpoints"]


def test_reload_applies_min_score_at_once_and_reports_socket_keys(daemon_factory, sockdir, det_repo, tmp_path):
    endpoint = f"ipc://{sockdir}/frigate/zmq_detector"
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[frigate]\nendpoint = "{endpoint}"\n')
    d = daemon_factory(det_repo, "--config", str(cfg), *PATIENT)  # --set outlives a reload
    with patient(endpoint, "/config/model.tflite") as client:
        assert client.detect_raw(_half_green())[0, 1] == pytest.approx(0.496, abs=0.01)
        cfg.write_text(f'[frigate]\nendpoint = "{endpoint}"\nmin_score = 0.6\nsocket_mode = 0o600\n')
        r = d.cli("ctl", "reload", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["restart_needed"] == ["frigate.socket_mode"]
        assert not client.detect_raw(_half_green()).any()
        assert client.timeouts == 0 and not client.errors
    assert stats(d)["frigate_dropped"] == {}, "no detections because of min_score, not a refused frame"


def yolo_like_model() -> bytes:
    """float32 [1, 32, 32, 3] -> one [1, 4 + 3, 16] output (centre x/y, w, h in pixels, 3 class scores)."""
    rng = np.random.default_rng(3)
    g = tb.GraphBuilder()
    x = g.input("images", [1, 32, 32, 3])
    flat = g.reshape(x, [1, 32 * 32 * 3], "flat")
    w = rng.normal(0, 1 / 16, (7 * 16, 32 * 32 * 3)).astype(np.float32)
    # Row-major [7, 16]: centre x and y (4..28 px), width and height (4..12 px), then 3 class scores.
    b = np.concatenate([rng.uniform(4, 28, 32), rng.uniform(4, 12, 32), rng.uniform(-0.2, 0.9, 48)]).astype(np.float32)
    y = g.tensor("fc", [1, 7 * 16])
    g.op("FULLY_CONNECTED", [flat, g.const("w", w), g.const("b", b)], [y])
    out = g.reshape(y, [1, 7, 16], "output0")
    return g.build([out])


def test_yolo_generic_frames_equal_in_process_post_processing(daemon_factory, sockdir, tmp_path):
    from edged.runtime import detection

    src = tmp_path / "yolo.tflite"
    src.write_bytes(yolo_like_model())
    repo = tmp_path / "repo"
    pack(src, name="yolo", version="v1", repo=repo, runtime=os.environ.get("EDGED_RUNTIME", "auto"))
    d, endpoint = start(daemon_factory, sockdir, repo)
    rng = np.random.default_rng(0)
    images = [rng.random((1, 32, 32, 3), dtype=np.float32) for _ in range(8)]
    with patient(endpoint, "/config/model_cache/yolo.onnx", model_type="yologeneric") as client:
        got = [client.detect_raw(img) for img in images]
        assert client.timeouts == 0 and not client.errors
    runtime = os.environ.get("EDGED_RUNTIME", "auto")
    module = "tflite_runtime.interpreter" if runtime == "tflite-runtime" else "ai_edge_litert.interpreter"
    it = importlib.import_module(module).Interpreter(model_path=str(src))
    it.allocate_tensors()
    detected = 0
    for img, g in zip(images, got):
        it.set_tensor(it.get_input_details()[0]["index"], img)
        it.invoke()
        want = detection.yolo_generic([it.get_tensor(it.get_output_details()[0]["index"])], 32, 32, 0.4)
        np.testing.assert_allclose(g, want, atol=1e-5)
        detected += int(np.count_nonzero(want[:, 1]))
    assert detected > 8, "the frames should hold detections"
    assert d.log().count("is answered by edged model yolo") == 1


def test_frigate_tcp_stays_plaintext_when_the_daemon_uses_curve(daemon_factory, det_repo, keys, tmp_path):
    """Frigate cannot do CURVE: its opt-in TCP endpoint is never made a CURVE server."""
    predict, control, frigate = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[security]\nserver_secret_key = "{keys["dir"] / "server.key_secret"}"\n'
                   f'client_keys_dir = "{keys["allowed"]}"\n'
                   f'[frigate]\nendpoint = "{frigate}"\nallow_tcp = true\n')
    d = daemon_factory(det_repo, "--config", str(cfg), "--endpoint", predict, "--control-endpoint", control,
                       *PATIENT, ready=False)
    wait_until(lambda: d.proc.poll() is not None or "ready in" in d.log(), "the daemon to start", daemon=d)
    assert d.proc.poll() is None, d.log()
    with patient(frigate, "/config/model.tflite") as client:
        assert client.model_ready, client.errors
        assert client.detect_raw(_half_green())[0, 1] == pytest.approx(0.496, abs=0.01)
        assert client.timeouts == 0 and not client.errors


def test_a_frigate_socket_directory_others_can_write_is_refused(daemon_factory, sockdir, det_repo):
    shared = sockdir / "shared"
    shared.mkdir()
    shared.chmod(0o770)  # group-writable: a group member could replace the socket and answer Frigate
    d = daemon_factory(det_repo, "--frigate-endpoint", f"ipc://{shared}/zmq_detector", ready=False)
    assert d.proc.wait(timeout=60) != 0
    assert "refusing frigate endpoint" in d.log()
