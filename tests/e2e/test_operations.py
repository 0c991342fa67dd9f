"""Operator-facing behaviour: socket permissions, Prometheus, JSON logs, the events socket."""

from __future__ import annotations

import grp
import json
import os
import shutil
import socket
import stat
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import zmq

from edged.errors import RequestError
from tests.e2e.repohelpers import publish, wait_until

pytestmark = [pytest.mark.e2e]



def golden(repo):
    return np.load(repo / "digits" / "v1" / "golden" / "0.input.npy")


def test_socket_permissions(daemon, sockdir):
    assert stat.S_IMODE((sockdir / "p.sock").stat().st_mode) == 0o660
    assert stat.S_IMODE((sockdir / "c.sock").stat().st_mode) == 0o600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_predict_over_plain_tcp_on_loopback(daemon_factory, repo, sockdir, tmp_path):
    # Loopback TCP needs no CURVE for predictions (test_security.py covers CURVE and TCP control).
    port = free_port()
    d = daemon_factory(repo, endpoint=f"tcp://127.0.0.1:{port}")
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(d.proc.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert ("127.0.0.1", port) in listening and ("0.0.0.0", port) not in listening  # loopback only
    assert not (sockdir / "p.sock").exists()  # no ipc socket made on the side
    expected = np.load(repo / "digits" / "v1" / "golden" / "0.output0.npy")
    with d.client() as c:
        r = c.predict(golden(repo))
    assert r.version == "v1"
    np.testing.assert_allclose(r.outputs[0], expected, rtol=1e-5, atol=1e-6)
    r = d.cli("predict", "--json", str(repo / "digits" / "v1" / "golden" / "0.input.npy"))  # EDGED_ENDPOINT
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == "v1", r.stderr
    status = json.loads(d.cli("ctl", "status", "--json").stdout)
    assert status["endpoints"]["predict"] == f"tcp://127.0.0.1:{port}"
    # Another daemon (its own repository and runtime directory) on the same port is refused at
    # startup with the reason, and exits.
    elsewhere = Path(tempfile.mkdtemp(prefix="edged-t-", dir="/tmp"))
    try:
        other = daemon_factory(shutil.copytree(repo, tmp_path / "other", symlinks=True),
                               endpoint=f"tcp://127.0.0.1:{port}",
                               control_endpoint=f"ipc://{elsewhere}/c.sock", ready=False)
        assert other.proc.wait(60) != 0
        assert "cannot bind predict endpoint" in other.log()
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
    assert d.stop() == 0


def other_group() -> grp.struct_group | None:
    """A group other than ours that this process may give a file to (any, as root)."""
    mine = os.getgid()
    candidates = grp.getgrall() if os.geteuid() == 0 else [grp.getgrgid(g) for g in os.getgroups()]
    return next((g for g in candidates if g.gr_gid != mine), None)


def test_socket_group_owns_the_predict_socket_only(daemon_factory, repo, sockdir, tmp_path):
    group = other_group()
    if group is None:
        pytest.skip("no group but our own to give the socket to (needs root or a supplementary group)")
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[server]\nsocket_group = "{group.gr_name}"\n')
    d = daemon_factory(repo, "--config", str(cfg))
    predict, control = (sockdir / "p.sock").stat(), (sockdir / "c.sock").stat()
    assert predict.st_gid == group.gr_gid and stat.S_IMODE(predict.st_mode) == 0o660  # the group may connect
    assert control.st_gid == os.getgid() and stat.S_IMODE(control.st_mode) == 0o600  # control stays ours
    with d.client() as c:
        assert c.predict(golden(repo)).version == "v1"
    assert "cannot give" not in d.log()


def test_an_unknown_socket_group_is_logged_and_the_daemon_serves(daemon_factory, repo, sockdir, tmp_path):
    cfg = tmp_path / "edged.toml"
    cfg.write_text('[server]\nsocket_group = "edged-no-such-group"\n')
    d = daemon_factory(repo, "--config", str(cfg))
    assert (sockdir / "p.sock").stat().st_gid == os.getgid()
    assert "cannot give" in d.log() and "edged-no-such-group" in d.log()
    with d.client() as c:
        assert c.predict(golden(repo)).version == "v1"


def test_prometheus_text_parses_and_http_endpoint_serves_it(daemon_factory, repo, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[server]\nmetrics_endpoint = "127.0.0.1:{port}"\n')
    d = daemon_factory(repo, "--config", str(cfg))
    with d.client() as c:
        for _ in range(7):
            c.predict(golden(repo))
        with pytest.raises(RequestError):
            c.predict(np.zeros((1, 8, 8, 1), np.int32))
    r = d.cli("ctl", "stats", "--prometheus")
    assert r.returncode == 0, r.stderr
    families = {f.name: f for f in text_string_to_metric_families(r.stdout)}
    requests = [s for s in families["edged_requests"].samples if s.name == "edged_requests_total"]
    assert requests and requests[0].labels == {"model": "digits", "version": "v1"} and requests[0].value == 8
    errors = [s for s in families["edged_errors"].samples if s.labels.get("code") == "BAD_DTYPE"]
    assert errors and errors[0].value == 1
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert {f.name for f in text_string_to_metric_families(body)} >= {"edged_requests", "edged_request_latency_seconds"}


def test_metrics_port_in_use_is_a_clear_startup_error_that_leaves_no_socket_files(daemon_factory, repo, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = tmp_path / "edged.toml"
        cfg.write_text(f'[server]\nmetrics_endpoint = "127.0.0.1:{taken.getsockname()[1]}"\n')
        d = daemon_factory(repo, "--config", str(cfg), ready=False)
        assert d.proc.wait(60) == 7  # CONFIG_INVALID, not a traceback
    assert "cannot serve metrics on 127.0.0.1:" in d.log() and "Traceback" not in d.log()
    for endpoint in (d.endpoint, d.control_endpoint):
        assert not Path(endpoint[len("ipc://"):]).exists(), endpoint


def test_an_endpoint_in_an_uncreatable_directory_fails_startup_with_the_reason(repo, sockdir):
    import os
    import subprocess
    import sys

    env = {**os.environ, "EDGED_RUNTIME": os.environ.get("EDGED_RUNTIME", "auto")}
    env.pop("NOTIFY_SOCKET", None)
    # /proc refuses mkdir even for root: the daemon must say so and exit, not hang in cleanup.
    r = subprocess.run([sys.executable, "-m", "edged", "serve", "--models", str(repo),
                        "--endpoint", "ipc:///proc/edged-no/p.sock", "--control-endpoint", f"ipc://{sockdir}/c.sock"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 7, r.stderr
    assert "cannot create the directory of predict endpoint ipc:///proc/edged-no/p.sock" in r.stderr
    assert not list(sockdir.glob("*.sock")), "sockets bound before the failure (events) are removed"


def test_json_logs(daemon_factory, repo):
    d = daemon_factory(repo, "--log-format", "json")
    assert d.stop() == 0
    lines = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in lines]
    assert any(m.startswith("ready in") for m in messages)
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in lines)


def test_swap_events_are_published(daemon_factory, tmp_path, sockdir):
    from edged.testing import tflite_build as tb

    repo = tmp_path / "repo"
    publish(repo, "v1", tb.random_classifier(seed=1), tmp=tmp_path)
    cfg = tmp_path / "edged.toml"
    cfg.write_text("[repository]\nsettle_s = 0.2\n")
    d = daemon_factory(repo, "--config", str(cfg))
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"model")
    sub.connect(f"ipc://{sockdir}/events.sock")
    # A SUB socket joins asynchronously; publish only once it surely has.
    wait_until(lambda: (sockdir / "events.sock").exists(), "events socket", daemon=d)
    events = []
    for attempt in range(3):
        publish(repo, f"v{attempt + 2}", tb.random_classifier(seed=attempt + 2), tmp=tmp_path)
        while sub.poll(30_000):
            topic, body = sub.recv_multipart()
            events.append(json.loads(body))
            if events[-1]["event"] == "swap":
                break
        if events:
            break
    sub.close()
    swap = [e for e in events if e["event"] == "swap"]
    assert swap and swap[0]["model"] == "m" and swap[0]["version"].startswith("v") and "ts" in swap[0]


def test_power_and_rollback_events_are_published(daemon_factory, tmp_path, sockdir):
    from edged.testing import tflite_build as tb

    repo = tmp_path / "repo"
    publish(repo, "v1", tb.random_classifier(seed=1), tmp=tmp_path)
    d = daemon_factory(repo)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"ipc://{sockdir}/events.sock")
    wait_until(lambda: (sockdir / "events.sock").exists(), "events socket", daemon=d)

    def next_event(kind: str) -> tuple[bytes, dict]:
        while sub.poll(30_000):
            topic, body = sub.recv_multipart()
            event = json.loads(body)
            if event["event"] == kind:
                return topic, event
        raise AssertionError(f"no {kind} event")

    # A SUB socket joins asynchronously: switch profiles until one event arrives.
    power_event = None
    for _ in range(20):
        assert d.cli("ctl", "power", "--profile", "powersave", "--for", "1m").returncode == 0
        assert d.cli("ctl", "power", "--auto").returncode == 0
        if sub.poll(500):
            topic, body = sub.recv_multipart()
            power_event = (topic, json.loads(body))
            break
    assert power_event is not None and power_event[0] == b"power"
    assert power_event[1]["profile"] in ("powersave", "performance")

    publish(repo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    topic, swap = next_event("swap")
    assert (topic, swap["version"], swap["previous"]) == (b"model", "v2", "v1")
    assert d.cli("ctl", "rollback").returncode == 0
    topic, rollback = next_event("rollback")
    assert (topic, rollback["model"], rollback["version"], rollback["from"]) == (b"model", "m", "v1", "v2")
    sub.close()


def test_environment_alone_configures_serve_and_ctl_and_sigint_stops_cleanly(repo, sockdir, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from edged import Client

    cfg = tmp_path / "env.toml"
    cfg.write_text("[server]\nworkers = 1\n")
    env = {**os.environ, "EDGED_MODELS": str(repo), "EDGED_CONFIG": str(cfg),
           "EDGED_ENDPOINT": f"ipc://{sockdir}/env-p.sock", "EDGED_CONTROL_ENDPOINT": f"ipc://{sockdir}/env-c.sock",
           "EDGED_RUNTIME": os.environ.get("EDGED_RUNTIME", "auto")}
    env.pop("NOTIFY_SOCKET", None)
    log = open(sockdir / "env.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "edged", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from edged.errors import TransportError

        def healthy() -> bool:
            with Client(env["EDGED_ENDPOINT"], timeout=1) as c:
                try:
                    return c.health()["status"] == "ok"
                except TransportError:  # not bound yet
                    return proc.poll() is not None  # a dead daemon fails below, not by timing out
        wait_until(healthy, "daemon ready", timeout=120)
        assert proc.poll() is None, (sockdir / "env.log").read_text()
        r = subprocess.run([sys.executable, "-m", "edged", "ctl", "status", "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        status = json.loads(r.stdout)
        assert status["config"] == str(cfg) and status["repository"] == str(repo)
        assert status["workers"]["total"] == 1
        proc.send_signal(signal.SIGINT)  # Ctrl-C in a terminal: the same drain as SIGTERM
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert not (sockdir / "env-p.sock").exists() and not (sockdir / "env-c.sock").exists()
