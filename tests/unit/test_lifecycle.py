"""The daemon's lifecycle in one shape: resources declared in __init__, released by one close()."""

from __future__ import annotations

import socket

import pytest

from edged import config as config_mod
from edged.errors import EdgedError
from edged.seams import FakeClock
from edged.server.daemon import Daemon
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
