"""sd_notify against a real datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.seams import FakeClock
from edged.server.notify import Notifier, WatchdogGate


def _recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="edn-", dir="/tmp"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def systemd_sock(sock_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(sock_dir / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2.0)
    try:
        yield s, path
    finally:
        s.close()


def test_no_socket_means_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.watchdog_interval() is None
    assert n.ready("x") is False
    assert n.reloading() is False
    assert n.stopping() is False
    assert n.status("x") is False
    assert n.watchdog() is False


def test_ready_status_and_stopping(systemd_sock: tuple[socket.socket, str]) -> None:
    s, path = systemd_sock
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("serving 2 models")
    assert _recv(s) == {"READY": "1", "STATUS": "serving 2 models"}
    assert n.status("line one\nline two")
    assert _recv(s) == {"STATUS": "line one line two"}
    assert n.stopping()
    assert _recv(s) == {"STOPPING": "1"}
    assert n.extend_timeout(2.5)
    assert _recv(s) == {"EXTEND_TIMEOUT_USEC": "2500000"}
    n.close()


def test_reloading_carries_monotonic_usec(systemd_sock: tuple[socket.socket, str]) -> None:
    s, path = systemd_sock
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = _recv(s)
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after


def test_abstract_namespace_socket() -> None:
    name = f"edged-test-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    s.settimeout(2.0)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "4000000"})
        assert n.watchdog()
        assert _recv(s) == {"WATCHDOG": "1"}
    finally:
        s.close()


def test_watchdog_interval_and_pid(systemd_sock: tuple[socket.socket, str]) -> None:
    _, path = systemd_sock
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(env).watchdog_interval() == 15.0
    assert Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 15.0
    other = Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval() is None
    assert other.watchdog() is False
    assert Notifier.from_env({**env, "WATCHDOG_USEC": "soon"}).watchdog_interval() is None
    assert Notifier.from_env({**env, "WATCHDOG_USEC": "0"}).watchdog_interval() is None
    # A watchdog without a socket is useless: nothing to ping.
    assert Notifier.from_env({"WATCHDOG_USEC": "30000000"}).watchdog_interval() is None


def test_bad_notify_socket_value_disables() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_send_errors_never_raise_and_log_once(sock_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(sock_dir / "gone.sock")})
    with caplog.at_level(logging.DEBUG, logger="edged.server.notify"):
        assert n.ready() is False
        assert n.status("x") is False
        assert n.stopping() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "sd_notify" in warnings[0].getMessage()


def test_a_reader_that_stops_reading_never_blocks_the_sender(systemd_sock: tuple[socket.socket, str]) -> None:
    # A unix datagram queue holds net.unix.max_dgram_qlen messages (10 by default); a blocking
    # sendto() past that waits until the reader drains it, and the daemon's main loop with it.
    s, path = systemd_sock
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    results: list[bool] = []
    sender = threading.Thread(target=lambda: results.extend(n.status(f"tick {i}") for i in range(200)), daemon=True)
    sender.start()
    sender.join(60)
    assert not sender.is_alive(), "sd_notify blocked on a full notify socket"
    assert results[0] is True and False in results  # the queue filled: later pings dropped, not waited for
    s.setblocking(False)
    while True:  # the reader catches up: sending works again
        try:
            s.recv(4096)
        except BlockingIOError:
            break
    s.settimeout(2.0)
    assert n.ready() and _recv(s) == {"READY": "1"}


def test_recovers_when_socket_comes_back(sock_dir: Path) -> None:
    path = str(sock_dir / "late.sock")
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.ready() is False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2.0)
    try:
        assert n.ready()
        assert _recv(s) == {"READY": "1"}
    finally:
        s.close()


# -- WatchdogGate ------------------------------------------------------------------------------


class _Workers:
    def __init__(self) -> None:
        self.longest = 0.0

    def __call__(self) -> float:
        return self.longest


def test_gate_cadence_is_the_interval() -> None:
    clock = FakeClock()
    gate = WatchdogGate(clock, 15.0, _Workers(), stuck_invoke_s=30.0)
    assert gate.due()
    n = Notifier(None, None)
    assert gate.maybe_ping(n) is True  # no socket, but the gate still records the ping
    assert not gate.due()
    clock.advance(14.9)
    assert not gate.due()
    assert gate.maybe_ping(n) is False
    clock.advance(0.1)
    assert gate.due()


def test_gate_withholds_ping_while_a_worker_is_stuck(systemd_sock: tuple[socket.socket, str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    s, path = systemd_sock
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    clock = FakeClock()
    workers = _Workers()
    gate = WatchdogGate(clock, n.watchdog_interval() or 0, workers, stuck_invoke_s=30.0)
    assert gate.maybe_ping(n)
    assert _recv(s) == {"WATCHDOG": "1"}

    workers.longest = 30.5
    clock.advance(15.0)
    assert not gate.should_ping()
    assert "invoke()" in gate.reason
    with caplog.at_level(logging.ERROR, logger="edged.server.notify"):
        assert gate.maybe_ping(n) is False
        clock.advance(1.0)
        assert gate.maybe_ping(n) is False  # logged once per episode
    assert len([r for r in caplog.records if "withholding" in r.getMessage()]) == 1
    assert _recv(s)["STATUS"].startswith("unhealthy:")  # the status line, not a ping

    workers.longest = 0.0
    clock.advance(1.0)
    assert gate.maybe_ping(n)
    assert _recv(s) == {"WATCHDOG": "1"}
    assert gate.reason == ""


def test_gate_exactly_at_the_limit_is_still_healthy() -> None:
    workers = _Workers()
    workers.longest = 30.0
    assert WatchdogGate(FakeClock(), 1.0, workers, stuck_invoke_s=30.0).should_ping()


def test_gate_checks_loop_age() -> None:
    clock = FakeClock()
    last = {"t": clock.monotonic()}
    gate = WatchdogGate(clock, 5.0, _Workers(), 30.0, last_tick=lambda: last["t"], max_loop_age_s=10.0)
    clock.advance(9.0)
    assert gate.should_ping()
    clock.advance(2.0)
    assert not gate.should_ping()
    assert "main loop" in gate.reason
    last["t"] = clock.monotonic()
    assert gate.should_ping()


def test_gate_rejects_bad_interval() -> None:
    with pytest.raises(ValueError):
        WatchdogGate(FakeClock(), 0, _Workers(), 30.0)
