"""Review findings (issue 12): behaviour a user would trip over, each against a real daemon."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq

from edged import protocol
from edged.errors import DeadlineExceeded
from edged.testing import tflite_build as tb
from tests.conftest import ROOT
from tests.e2e.repohelpers import publish, publish_unloadable, state_of, versions, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.runtime]

DARK = np.zeros((1, 8, 8, 1), np.float32)


def config(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "edged.toml"
    p.write_text("[repository]\nsettle_s = 0.2\nvalidation_timeout_s = 60\n"
                 "[repository.probation]\nseconds = 3600\nrequests = 1000000\n" + extra)
    return p


@pytest.fixture
def mrepo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    publish(repo, "v1", tb.random_classifier(seed=1), tmp=tmp_path)
    return repo


def test_a_failed_pin_keeps_the_earlier_pin(daemon_factory, mrepo, tmp_path):
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    assert d.cli("ctl", "pin", "v2").returncode == 0
    publish_unloadable(mrepo, "v3", b"not a flatbuffer" * 8)
    r = d.cli("ctl", "pin", "v3")
    assert r.returncode == 6, r.stderr
    assert versions(d)["pinned"] == "v2"
    with d.client() as c:
        assert c.predict(DARK).version == "v2"


def test_deadline_ms_zero_is_a_deadline(daemon):
    x = np.zeros((1, 8, 8, 1), np.float32)
    with daemon.client() as c:
        with pytest.raises(DeadlineExceeded):
            c.predict(x, deadline_ms=0)
        assert c.predict(x).version == "v1"


def test_version_changing_calls_are_refused_while_draining(daemon_factory, tmp_path):
    repo = tmp_path / "slow-repo"
    publish(repo, "v1", tb.slow_model(size=64, depth=4), tmp=tmp_path)
    publish(repo, "v2", tb.slow_model(size=64, depth=4, seed=2), tmp=tmp_path)
    d = daemon_factory(repo, "--workers", "1", "--config",
                       str(config(tmp_path, '[repository.models.m]\nactivation = "manual"\n')))
    ctx = zmq.Context.instance()
    pred = ctx.socket(zmq.DEALER)
    ctl = ctx.socket(zmq.DEALER)
    for s in (pred, ctl):
        s.setsockopt(zmq.LINGER, 0)
    pred.connect(d.endpoint)
    ctl.connect(d.control_endpoint)
    try:
        head = {"v": 1, "op": "predict", "inputs": [protocol.tensor_meta(DARK)]}
        for i in range(30):  # keeps the drain busy while the control calls arrive
            pred.send_multipart([json.dumps({**head, "id": i}).encode(), DARK.tobytes()])
        assert pred.poll(60_000)
        calls = [{"op": "quit"}, {"op": "swap", "version": "v2"}, {"op": "pin", "version": "v2"},
                 {"op": "rollback"}, {"op": "unpin"}, {"op": "unmark", "version": "v2"}]
        for i, call in enumerate(calls):  # pipelined: read in one batch, right after quit
            ctl.send_multipart([json.dumps({"v": 1, "id": i, **call}).encode()])
        replies = {}
        while len(replies) < len(calls) and ctl.poll(60_000):
            r = json.loads(ctl.recv_multipart()[0])
            replies[r["id"]] = r
        assert replies[0]["ok"] and replies[0]["stopping"]
        for i in range(1, len(calls)):
            assert not replies[i]["ok"], replies[i]
            assert replies[i]["error"]["code"] == "SHUTTING_DOWN", replies[i]
            assert "shutting down" in replies[i]["error"]["message"]
    finally:
        pred.close()
        ctl.close()
    assert d.stop(sig=None) == 0


def test_json_mode_prints_errors_as_json_with_the_documented_exit_status(daemon, tmp_path):
    def failed(r, status: int, code: str) -> dict:
        assert r.returncode == status, (r.stdout, r.stderr)
        out = json.loads(r.stdout)
        assert out["ok"] is False and out["exit_status"] == status and out["error"]["code"] == code
        assert out["error"]["message"] and isinstance(out["error"]["details"], dict)
        return out

    failed(daemon.cli("ctl", "swap", "v9", "--json"), 4, "UNKNOWN_VERSION")
    failed(daemon.cli("ctl", "pin", "../x", "--json"), 3, "BAD_REQUEST")
    failed(daemon.cli("predict", "--json", str(tmp_path / "missing.npy")), 3, "BAD_REQUEST")
    failed(daemon.cli("info", "--json", "--model", "nope"), 4, "UNKNOWN_MODEL")
    nobody = daemon.endpoint.rsplit("/", 1)[0] + "/nobody-here.sock"  # a safe directory, nobody listening
    failed(daemon.cli("health", "--json", "--endpoint", nobody, "--timeout", "0.5"), 8, "NOT_RUNNING")


def test_extend_timeout_is_sent_while_models_load_and_when_a_long_drain_starts(daemon_factory, repo, sockdir,
                                                                               tmp_path):
    from tests.e2e.test_systemd_notify import FakeSystemd

    fs = FakeSystemd(sockdir / "notify.sock")
    try:
        cfg = tmp_path / "edged.toml"
        cfg.write_text("[server]\ngrace_period_s = 45\n")
        d = daemon_factory(repo, "--config", str(cfg), ready=False, env={"NOTIFY_SOCKET": str(fs.path)})
        first = fs.next()
        assert int(first["EXTEND_TIMEOUT_USEC"]) >= 30_000_000, first  # before the model loads
        fs.wait_for("READY", "1")
        d.wait_ready()
        r = d.cli("ctl", "quit")
        assert r.returncode == 0, r.stderr
        fs.wait_for("STOPPING", "1")
        ext = fs.wait_for("EXTEND_TIMEOUT_USEC")
        assert int(ext["EXTEND_TIMEOUT_USEC"]) >= 45_000_000  # the whole grace period, and the joins
        assert d.stop(sig=None) == 0
    finally:
        fs.close()


def test_an_operators_swap_holds_until_a_newer_version_arrives(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    with d.client() as c:
        wait_until(lambda: c.predict(DARK).version == "v2", "v2 to serve on probation", daemon=d)
        r = d.cli("ctl", "swap", "v1", "--json")
        assert r.returncode == 0, r.stderr
        reply = json.loads(r.stdout)
        assert reply["changed"] is True and reply["held"] == "v2" and "unpin" in reply["holds_until"]
        # A rescan queues any auto swap before the next operator call; ops run in order,
        # so a second swap to v1 says whether v2 came back in between.
        assert d.cli("ctl", "reload").returncode == 0
        r = d.cli("ctl", "swap", "v1", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["changed"] is False, "auto-activation undid the operator's swap"
        assert c.predict(DARK).version == "v1" and versions(d)["held"] == "v2"
        publish(mrepo, "v3", tb.random_classifier(seed=3), tmp=tmp_path)  # newer than any seen: it may go
        wait_until(lambda: c.predict(DARK).version == "v3", "v3 to serve", daemon=d)
        assert versions(d)["held"] is None


def test_unpin_releases_an_operators_swap(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    with d.client() as c:
        wait_until(lambda: c.predict(DARK).version == "v2", "v2 to serve", daemon=d)
        assert d.cli("ctl", "swap", "v1").returncode == 0
        assert d.cli("ctl", "unpin").returncode == 0
        wait_until(lambda: c.predict(DARK).version == "v2", "v2 back after unpin", daemon=d)


def test_swap_back_to_the_committed_version_skips_probation_and_commit_names_the_old(daemon_factory, mrepo,
                                                                                      tmp_path, sockdir):
    cfg = config(tmp_path).read_text().replace("seconds = 3600\nrequests = 1000000", "seconds = 0\nrequests = 10")
    (tmp_path / "quick.toml").write_text(cfg)
    d = daemon_factory(mrepo, "--config", str(tmp_path / "quick.toml"))
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"model")
    sub.connect(f"ipc://{sockdir}/events.sock")
    try:
        publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
        with d.client() as c:
            wait_until(lambda: c.predict(DARK).version == "v2", "v2 to serve", daemon=d)
            for _ in range(10):
                c.predict(DARK)
            commit = None
            while commit is None and sub.poll(60_000):
                event = json.loads(sub.recv_multipart()[1])
                commit = event if event["event"] == "commit" else None
            assert commit is not None and commit["version"] == "v2" and commit["previous_committed"] == "v1"
            # v1 is no longer committed: swapping to it is a real change, on probation.
            assert d.cli("ctl", "swap", "v1").returncode == 0
            assert state_of(d, "v1")["state"] == "probation"
            # Back to the committed v2: proven already, so it serves without a new probation.
            assert d.cli("ctl", "swap", "v2").returncode == 0
            assert state_of(d, "v2")["state"] == "serving" and versions(d)["committed"] == "v2"
            assert c.predict(DARK).version == "v2"
    finally:
        sub.close()


def test_nothing_listening_fails_at_once_with_exit_8(daemon, sockdir):
    stale = sockdir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))  # a socket file with nobody listening: a daemon that died
    s.close()
    for endpoint in (f"ipc://{sockdir}/missing.sock", f"ipc://{stale}"):
        for cmd in (["health", "--endpoint", endpoint], ["ctl", "status", "--control-endpoint", endpoint]):
            try:  # a generous --timeout: only the fast check can answer within the run's bound
                r = daemon.cli(*cmd, "--timeout", "3600", "--json", timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{cmd} waited for a reply from {endpoint}")
            assert r.returncode == 8, (r.stdout, r.stderr)
            assert json.loads(r.stdout)["error"]["code"] == "NOT_RUNNING" and "is edged running" in r.stderr
    assert daemon.cli("health").returncode == 0  # a live daemon still answers


def test_probation_progress_is_shown_by_versions_and_status(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    with d.client() as c:
        wait_until(lambda: c.predict(DARK).version == "v2", "v2 to serve", daemon=d)
        for _ in range(4):
            c.predict(DARK)
    row = state_of(d, "v2")
    assert row["state"] == "probation"
    prog = row["probation"]
    assert prog["requests"] >= 5 and prog["requests_needed"] == 1_000_000 and prog["seconds_needed"] == 3600
    assert prog["error_rate"] == 0.0 and prog["max_error_rate"] == 0.05 and prog["nonfinite_rate"] == 0.0
    assert prog["p95_invoke_us"] is not None and prog["max_p95_ratio"] > 1
    status = json.loads(d.cli("ctl", "status", "--json").stdout)
    assert status["models"][0]["probation"]["requests"] >= 5
    text = d.cli("ctl", "versions").stdout
    assert "/1000000 requests" in text and "/3600 s" in text and "errors 0.0% (max 5.0%)" in text
    assert "probation:" in d.cli("ctl", "status").stdout


def test_ctl_events_follow_prints_events_as_they_happen(daemon):
    proc = subprocess.Popen([sys.executable, "-m", "edged", "ctl", "events", "--follow", "--count", "1", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.env)
    try:
        # SUB joins asynchronously: switch profiles until the watcher has seen one event.
        for _ in range(100):
            assert daemon.cli("ctl", "power", "--profile", "powersave", "--for", "1m").returncode == 0
            assert daemon.cli("ctl", "power", "--auto").returncode == 0
            try:
                out, err = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            pytest.fail("ctl events printed nothing")
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    event = json.loads(out.splitlines()[0])
    assert event["event"] == "profile" and "ts" in event


def test_small_things_a_user_met(daemon, tmp_path):
    r = daemon.cli("ctl", "unmark", "v9")
    assert r.returncode == 4 and "versions: v1" in r.stderr  # no such version: an error naming the real ones
    r = daemon.cli("info", "--model", "nope")
    assert r.returncode == 4 and "models: digits" in r.stderr
    r = daemon.cli("ctl", "versions", "--model", "nope")
    assert r.returncode == 4 and "models: digits" in r.stderr
    r = daemon.cli("ctl", "pin", "v1")
    assert r.returncode == 0 and "None" not in r.stdout
    r = daemon.cli("ctl", "unpin")
    assert r.returncode == 0 and r.stdout.strip() == "model=digits, pinned=none"
    with daemon.client() as c:
        c.predict(np.zeros((1, 8, 8, 1), np.float32))
    r = daemon.cli("ctl", "stats")
    assert r.returncode == 0 and "digits/v1" in r.stdout and "latency ms" in r.stdout and "{" not in r.stdout
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG not really")
    r = daemon.cli("predict", str(bad))
    assert r.returncode == 3 and "BAD_IMAGE" in r.stderr and "object at 0x" not in r.stderr
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 4, 4, 1), np.float32))
    r = daemon.cli("predict", str(x))
    assert r.returncode == 3 and "[1, 8, 8, 1]" in r.stderr and "np." not in r.stderr
    # A reader that leaves early is not an error: no BrokenPipe traceback.

    p = subprocess.run(f"{sys.executable} -m edged ctl versions | head -c 1", shell=True, capture_output=True,
                       text=True, env=daemon.env, timeout=120)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_the_readme_python_snippet_runs(daemon):
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"Or from Python.*?```python\n(.*?)```", readme, re.S).group(1)
    r = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, env=daemon.env,
                       cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("digits v1 ")


def test_repacking_keeps_preprocessing_and_golden_images_catch_a_wrong_one(daemon_factory, repo, tmp_path):
    from tests.e2e.test_serving import digit_png

    x = np.load(repo / "digits/v1/golden/0.input.npy")
    png = tmp_path / "digit.png"
    png.write_bytes(digit_png(x))
    v1 = repo / "digits/v1"

    def edged(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=300,
                              cwd=str(ROOT))

    d = daemon_factory(repo)
    with d.client() as c:
        want = c.predict_image(png.read_bytes(), top_k=1).top_k[0]
    label = want["label"]
    # README flags: no --preprocessing.  The new version follows v1's, and pack says what changed.
    r = edged("pack", str(v1 / "model.tflite"), "--name", "digits", "--version", "v2", "--repo", str(repo),
              "--labels", str(v1 / "labels.txt"), "--golden-image", f"{png}={label}")
    assert r.returncode == 0, r.stderr
    assert "changes from digits/v1" in r.stdout and "preprocessing" not in r.stdout
    v2 = json.loads((repo / "digits/v2/manifest.json").read_text())
    assert v2["preprocessing"] == json.loads((v1 / "manifest.json").read_text())["preprocessing"]
    assert v2["golden_images"][0]["label"] == label
    with d.client() as c:
        wait_until(lambda: c.predict_image(png.read_bytes(), top_k=1).version == "v2", "v2 to serve", daemon=d)
        got = c.predict_image(png.read_bytes(), top_k=1).top_k[0]
    assert got["label"] == label and got["score"] == pytest.approx(want["score"], abs=1e-4)

    # A preprocessing that changes the answer is refused by pack (v2's golden image follows along)...
    r = edged("pack", str(v1 / "model.tflite"), "--name", "digits", "--version", "v3", "--repo", str(repo),
              "--labels", str(v1 / "labels.txt"), "--preprocessing", '{"color": "L", "mean": [0], "std": [255]}')
    assert r.returncode == 6 and "golden image" in r.stderr and f"expected {label}" in r.stderr, r.stderr
    assert not (repo / "digits/v3").exists()
    # ...and by validation (offline and in the daemon) when a manifest's preprocessing is changed afterwards.
    m = json.loads((repo / "digits/v2/manifest.json").read_text())
    m["preprocessing"] = {"color": "L", "mean": [0.0], "std": [255.0], "invert": False}
    (repo / "digits/v2/manifest.json").write_text(json.dumps(m))
    r = edged("validate", str(repo / "digits/v2"))
    assert r.returncode == 6 and "golden image" in r.stderr and "preprocessing" in r.stderr, r.stderr
    # --no-inherit takes nothing from the followed version (here: the default preprocessing).
    r = edged("pack", str(v1 / "model.tflite"), "--name", "digits", "--version", "v4", "--repo", str(repo),
              "--no-inherit", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["compared_with"] in ("v1", "v2") and any(s.startswith("preprocessing:") for s in out["differences"])
    # A golden image is read like every other file of a version: a link is refused, never followed,
    # even when a hand-edited manifest leaves it out of the hashed "files".
    rel = v2["golden_images"][0]["file"]
    m = json.loads((repo / "digits/v2/manifest.json").read_text())
    m["preprocessing"] = v2["preprocessing"]
    del m["files"][rel]
    (repo / "digits/v2/manifest.json").write_text(json.dumps(m))
    (repo / "digits/v2" / rel).unlink()
    (repo / "digits/v2" / rel).symlink_to(png)
    r = edged("validate", str(repo / "digits/v2"))
    assert r.returncode == 6 and "golden/image0.png: is a symlink" in r.stderr, r.stderr


def test_pack_reads_a_given_golden_image_within_the_daemons_limits_and_never_from_a_fifo(repo, tmp_path):
    v1 = repo / "digits/v1"
    fifo = tmp_path / "camera.png"
    os.mkfifo(fifo)  # read with a plain open, pack would wait here for ever
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (16 * 1024 * 1024))  # over server.max_image_bytes
    for image, why in ((fifo, "not a regular file (a FIFO)"), (big, "over 16777216 bytes")):
        r = subprocess.run([sys.executable, "-m", "edged", "pack", str(v1 / "model.tflite"), "--name", "digits",
                            "--version", "v9", "--repo", str(repo), "--labels", str(v1 / "labels.txt"),
                            "--golden-image", f"{image}=1"],
                           capture_output=True, text=True, timeout=120, cwd=str(ROOT))
        assert r.returncode != 0 and f"--golden-image {image}" in r.stderr and why in r.stderr, r.stderr
        assert not (repo / "digits/v9").exists()
