"""Commands see the daemon through edged.server.api.DaemonAPI; the Daemon provides all of it."""

from __future__ import annotations

import inspect

from edged import config as config_mod
from edged.seams import FakeClock
from edged.server import api
from edged.server.commands import REGISTRY
from edged.server.daemon import Daemon


def _members() -> set[str]:
    names = set(getattr(api.DaemonAPI, "__annotations__", {}))
    names |= {n for n, v in vars(api.DaemonAPI).items() if inspect.isfunction(v) and not n.startswith("_")}
    return names


def test_the_daemon_provides_every_member_of_the_protocol(tmp_path):
    d = Daemon(config_mod.load(None, {"repository.path": str(tmp_path)}), clock=FakeClock())
    try:
        missing = [n for n in sorted(_members()) if not hasattr(d, n)]
        assert not missing, f"Daemon lacks {missing}"
        for name in _members():
            if inspect.isfunction(getattr(api.DaemonAPI, name, None)):
                want = list(inspect.signature(getattr(api.DaemonAPI, name)).parameters)[1:]
                have = list(inspect.signature(getattr(d, name)).parameters)
                assert have == want, f"{name}{have} differs from the protocol's {want}"
    finally:
        d.close(graceful=False)


def test_commands_take_the_protocol_not_any():
    for name, module in REGISTRY.items():
        hints = inspect.signature(module.execute).parameters
        assert str(hints["daemon"].annotation) == "DaemonAPI", name
        assert str(hints["req"].annotation) == "Request", name
