"""The daemon's lifecycle in one shape: resources declared in __init__, released by one close()."""

from __future__ import annotations

import socket
import sys

import pytest

from edged import config as config_mod
from edged.errors import EdgedError
from edged.seams import FakeClock
from edged.server.daemon import _GIL_SWITCH_S, Daemon
from edged.states import DaemonState


def _config(repo, sockdir, **more):
    return config_mod.load(None, {"server.endpoint": f"ipc://{sockdir}/p.sock",
                                  "server.control_endpoint": f"ipc://{sockdir}/c.sock",
                                  "repository.path": str(repo), "repository.watch": False, **more})


def test_a_daemon_that_never_started_closes_cleanly(repo, sockdir):
    d = Daemon(_config(repo, sockdir), clock=FakeClock())
    assert d.models is None and d.ctx is None and d.predict_sock is None  # declared, not yet acquired
    d.close(graceful=False)
    d.close(graceful=True)  # idempotent, and graceful needs nothing startup did not make
    assert d.state is DaemonState.STOPPED


@pytest.mark.runtime
def test_a_startup_that_fails_late_releases_everything_it_took(repo, sockdir):
    from tests.conftest import runtime_choice

    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        d = Daemon(_config(repo, sockdir, **{"server.metrics_endpoint": f"127.0.0.1:{port}",
                                             "runtime.backend": runtime_choice()}), clock=FakeClock())
        with pytest.raises(EdgedError, match="cannot serve metrics"):
            d.run()  # models loaded, sockets bound, then the metrics port is taken
    finally:
        busy.close()
    assert not list(sockdir.glob("*.sock"))  # no socket file of a daemon that never ran (lock files stay)
    assert d.ctx is not None and d.ctx.closed
    assert d.state is DaemonState.STOPPED


@pytest.fixture
def switch_interval():
    """CPython's default GIL switch interval (5 ms) for the test, and whatever was set before it afterwards."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def _run_with(d: Daemon, monkeypatch, main_loop, startup=lambda: None) -> None:
    """Daemon.run around a fake main loop: no models, sockets or signal handlers; the real shutdown."""
    monkeypatch.setattr(d, "startup", startup)
    monkeypatch.setattr(d, "install_signal_handlers", lambda: {})
    monkeypatch.setattr(d, "restore_signal_handlers", lambda old: None)
    monkeypatch.setattr(d, "main_loop", main_loop)
    d.run()


@pytest.mark.parametrize("end", ["stop", "bug"])
def test_run_serves_with_a_short_gil_switch_interval_and_restores_the_previous_one(tmp_path, sockdir, monkeypatch,
                                                                                   switch_interval, end):
    d = Daemon(_config(tmp_path, sockdir), clock=FakeClock())
    serving = []

    def main_loop() -> None:
        serving.append(sys.getswitchinterval())
        if end == "bug":
            raise RuntimeError("a bug ends the main loop")

    if end == "bug":
        with pytest.raises(RuntimeError, match="a bug ends the main loop"):
            _run_with(d, monkeypatch, main_loop)
    else:
        _run_with(d, monkeypatch, main_loop)
    assert serving == [pytest.approx(_GIL_SWITCH_S)] and _GIL_SWITCH_S < 0.005
    assert sys.getswitchinterval() == pytest.approx(0.005)
    assert d.state is DaemonState.STOPPED  # shut down, too


def test_run_never_lengthens_the_switch_interval_nor_sets_it_when_startup_fails(tmp_path, sockdir, monkeypatch,
                                                                                switch_interval):
    # Whoever embeds the daemon asked for shorter still.  125 us: CPython keeps whole microseconds
    # and truncates, so set(get()) keeps some values exactly and others 1 us short (100 us -> 99).
    shorter = 0.000125
    assert shorter < _GIL_SWITCH_S
    sys.setswitchinterval(shorter)
    serving = []
    _run_with(Daemon(_config(tmp_path, sockdir), clock=FakeClock()), monkeypatch,
              lambda: serving.append(sys.getswitchinterval()))
    assert serving == [shorter] and sys.getswitchinterval() == shorter
    sys.setswitchinterval(0.005)

    def startup() -> None:
        raise EdgedError("cannot bind")

    with pytest.raises(EdgedError, match="cannot bind"):
        _run_with(Daemon(_config(tmp_path, sockdir), clock=FakeClock()), monkeypatch,
                  lambda: pytest.fail("served after a failed startup"), startup)
    assert sys.getswitchinterval() == pytest.approx(0.005)
