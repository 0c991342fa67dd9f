"""The daemon tells a fake systemd (a datagram socket) the truth about its lifecycle."""

from __future__ import annotations

import json
import queue
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import runtime_choice

pytestmark = [pytest.mark.e2e]


class FakeSystemd:
    """A notify socket drained by a thread, as systemd drains it.

    The daemon sends without blocking and drops a message when the queue is full
    (net.unix.max_dgram_qlen, 10 by default), so a reader that only reads while a
    test waits would lose messages sent while the test runs a CLI command.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.seen: list[dict[str, str]] = []
        self._queue: queue.Queue[dict[str, str]] = queue.Queue()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="fake-systemd", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536).decode()
            except (TimeoutError, OSError):
                continue
            self._queue.put(dict(line.split("=", 1) for line in data.split("\n") if "=" in line))

    def next(self, timeout: float = 60.0) -> dict[str, str]:
        try:
            msg = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no notify message within {timeout}s") from None
        self.seen.append(msg)
        return msg

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60.0, limit: int = 2000) -> dict[str, str]:
        """Read messages until one has ``key`` (=``value``); bounded in count and time."""
        for _ in range(limit):
            msg = self.next(timeout)
            if key in msg and (value is None or msg[key] == value):
                return msg
        raise AssertionError(f"no {key}={value} in {limit} messages")

    def close(self) -> None:
        self._closed.set()
        self._reader.join(5)
        self.sock.close()


@pytest.fixture
def fake_systemd(sockdir: Path):
    fs = FakeSystemd(sockdir / "notify.sock")
    yield fs
    fs.close()


def test_ready_status_watchdog_reload_and_stopping(daemon_factory, repo, fake_systemd, sockdir, tmp_path):
    cfg = tmp_path / "edged.toml"
    cfg.write_text("[server]\nworkers = 1\n")
    d = daemon_factory(repo, "--config", str(cfg), ready=False,
                       env={"NOTIFY_SOCKET": str(fake_systemd.path), "WATCHDOG_USEC": "400000"})
    ready = fake_systemd.wait_for("READY", "1")
    assert "digits/v1" in ready.get("STATUS", "")
    d.wait_ready()  # sockets are bound when READY=1 is sent: health answers now
    # Watchdog pings keep coming at half of WATCHDOG_USEC while healthy.
    for _ in range(3):
        fake_systemd.wait_for("WATCHDOG", "1", timeout=10)

    # SIGHUP: RELOADING=1 then READY=1, config re-read.
    d.send_signal(signal.SIGHUP)
    msg = fake_systemd.wait_for("RELOADING", "1")
    assert "MONOTONIC_USEC" in msg
    fake_systemd.wait_for("READY", "1")

    # A valid change: live keys apply, the rest is reported, not silently ignored.
    cfg.write_text('[server]\nworkers = 2\nqueue_size = 5\nlog_format = "json"\n')
    r = d.cli("ctl", "reload", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["restart_needed"] == ["server.workers", "server.log_format"]
    fake_systemd.wait_for("READY", "1")
    assert json.loads(d.cli("ctl", "status", "--json").stdout)["queue_size"] == 5

    # An invalid config is refused and the old one kept; the daemon keeps serving,
    # whether the reload comes from edged ctl or from SIGHUP (systemctl reload).
    cfg.write_text("[server]\nworkers = -3\n")
    r = d.cli("ctl", "reload", "--json")
    assert r.returncode == 7 and "server.workers" in r.stderr
    fake_systemd.wait_for("READY", "1")
    d.send_signal(signal.SIGHUP)
    fake_systemd.wait_for("RELOADING", "1")
    fake_systemd.wait_for("READY", "1")
    with d.client() as c:
        assert c.health()["status"] == "ok"
    status = json.loads(d.cli("ctl", "status", "--json").stdout)
    assert status["state"] == "running"

    # A swap updates STATUS= (what `systemctl status` shows).
    from edged.repository.pack import pack

    pack(repo / "digits" / "v1" / "model.tflite", name="digits", version="v2", repo=repo, runtime=runtime_choice())
    for _ in range(2000):
        msg = fake_systemd.next(60)
        if "digits/v2" in msg.get("STATUS", ""):
            break
    else:
        raise AssertionError("no STATUS= naming digits/v2 after the swap")

    d.send_signal(signal.SIGTERM)
    fake_systemd.wait_for("STOPPING", "1")
    assert d.stop(sig=None) == 0
    assert "reload refused" in d.log()


def up_to_now(fs: FakeSystemd) -> list[dict[str, str]]:
    """Every message sent to ``fs`` before this call, read through the reader thread.

    A marker datagram sent now queues behind all of them (one socket keeps arrival order),
    so reading up to it leaves none still on its way, however late the reader thread runs.
    """
    marker = f"{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(f"TEST_MARKER={marker}".encode(), str(fs.path))
    out = []
    for _ in range(10_000):
        msg = fs.next(timeout=30)
        if msg.get("TEST_MARKER") == marker:
            return out
        out.append(msg)
    raise AssertionError("the marker never came back")


#: How long each observation window lasts, in ping intervals: long enough that a gate
#: that pinged while stuck would ping inside it.
WINDOW_PINGS = 3


def test_watchdog_pings_stop_while_a_worker_is_stuck(daemon_factory, fake_systemd, tmp_path):
    import numpy as np

    from edged.testing import tflite_build as tb
    from tests.e2e.repohelpers import publish, wait_until

    repo = tmp_path / "repo"
    # ~1.2 s per invoke even on the solo interpreter with both cores of a quiet machine (256 wide
    # was ~0.3 s there: too short for a stuck window of stuck_invoke_s + 3 ping intervals).
    publish(repo, "v1", tb.slow_model(size=512, depth=128), tmp=tmp_path, golden=False)
    cfg = tmp_path / "edged.toml"
    cfg.write_text("[server]\nworkers = 1\nstuck_invoke_s = 0.2\n")
    watchdog_usec = 200_000
    interval = watchdog_usec / 2 / 1e6  # the daemon pings at half of WATCHDOG_USEC
    d = daemon_factory(repo, "--config", str(cfg), env={"NOTIFY_SOCKET": str(fake_systemd.path),
                                                        "WATCHDOG_USEC": str(watchdog_usec)})
    fake_systemd.wait_for("WATCHDOG", "1", timeout=10)
    x = np.zeros((1, 8, 8, 1), np.float32)
    answered = [0]  # replies the busy client has received
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.is_set():
            busy.predict(x)
            answered[0] += 1

    # A window is counted only when health says "stuck" at both ends and no reply came in
    # between: with one worker and one request at a time, the next invoke cannot begin
    # before the client has the previous reply, so the same invoke was stuck throughout.
    stuck_windows: list[list[dict[str, str]]] = []
    with d.client(timeout=120) as busy, d.control() as ctl:
        t = threading.Thread(target=keep_busy)
        t.start()
        try:
            for _ in range(200):  # bounded: each pass lasts WINDOW_PINGS intervals or ends an invoke
                wait_until(lambda: ctl.health()["stuck_workers"], "a stuck worker", daemon=d)
                before = answered[0]
                health = ctl.health()
                up_to_now(fake_systemd)  # sent before this health answer: not in the window
                if not health["stuck_workers"]:
                    continue
                assert health["status"] == "unhealthy" and "stuck" in health["problems"][0]
                time.sleep(WINDOW_PINGS * interval)
                window = up_to_now(fake_systemd)  # sent before the health call that closes it
                if ctl.health()["stuck_workers"] and answered[0] == before:
                    stuck_windows.append(window)
                    if len(stuck_windows) >= 3:
                        break
            else:
                raise AssertionError(f"never saw a worker stuck for {WINDOW_PINGS} ping intervals")
        finally:
            stop.set()
            t.join(120)
    pings = [m for window in stuck_windows for m in window if m.get("WATCHDOG") == "1"]
    assert not pings, f"pinged while a worker was stuck: {stuck_windows}"
    # The gate says why on the STATUS line when it starts withholding.
    assert any(m.get("STATUS", "").startswith("unhealthy") for m in fake_systemd.seen), fake_systemd.seen
    # Healthy again: pings resume.
    fake_systemd.wait_for("WATCHDOG", "1", timeout=10)
    assert "withholding systemd watchdog ping" in d.log()
