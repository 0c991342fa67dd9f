"""The daemon tells a fake systemd (a datagram socket) the truth about its lifecycle."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]


class FakeSystemd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[dict[str, str]] = []

    def next(self, timeout: float = 60.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536).decode()
        msg = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
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

    # An invalid config is refused and the old one kept; the daemon keeps serving.
    cfg.write_text("[server]\nworkers = -3\n")
    r = d.cli("ctl", "reload", "--json")
    assert r.returncode == 7 and "server.workers" in r.stderr
    fake_systemd.wait_for("READY", "1")
    with d.client() as c:
        assert c.health()["status"] == "ok"
    status = json.loads(d.cli("ctl", "status", "--json").stdout)
    assert status["state"] == "running"

    d.send_signal(signal.SIGTERM)
    fake_systemd.wait_for("STOPPING", "1")
    assert d.stop(sig=None) == 0
    assert "reload refused" in d.log()
