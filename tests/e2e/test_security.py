"""Transport security against a real daemon: CURVE on loopback TCP, and what is refused without it."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from edged.client import Client
from edged.curve import ClientKeys, generate
from edged.errors import ErrorCode, TransportError
from tests.e2e.repohelpers import wait_until

pytestmark = [pytest.mark.e2e]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A server pair, an allowed client ("app") and a client nobody allowed yet ("stranger")."""
    kdir = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    allowed.mkdir(mode=0o755)
    for name in ("server", "app", "stranger"):
        generate(kdir, name)
    shutil.copy(kdir / "app.key", allowed / "app.key")
    return {"dir": kdir, "allowed": allowed}


def client_keys(keys: dict[str, Path], name: str) -> ClientKeys:
    return ClientKeys.from_files(keys["dir"] / "server.key", keys["dir"] / f"{name}.key_secret")


def start_curve_daemon(daemon_factory, repo: Path, keys: dict[str, Path], tmp_path: Path, extra: str = ""):
    predict, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[security]\nserver_secret_key = "{keys["dir"] / "server.key_secret"}"\n'
                   f'client_keys_dir = "{keys["allowed"]}"\n{extra}')
    d = daemon_factory(repo, "--config", str(cfg), "--endpoint", predict, "--control-endpoint", control, ready=False)
    app = client_keys(keys, "app")

    def healthy() -> bool:
        assert d.proc.poll() is None, d.log()
        try:
            with Client(predict, timeout=0.5, curve=app) as c:
                return c.health()["status"] == "ok"
        except TransportError:
            return False

    wait_until(healthy, "the daemon to answer over CURVE", daemon=d)
    return d, predict, control


def refused(endpoint: str, curve: ClientKeys | None) -> TransportError:
    with Client(endpoint, timeout=30, curve=curve) as c, pytest.raises(TransportError) as info:
        c.health()
    return info.value


def test_curve_lets_allowed_keys_in_and_refuses_unknown_or_missing_keys(daemon_factory, repo, keys, tmp_path):
    d, predict, control = start_curve_daemon(daemon_factory, repo, keys, tmp_path)
    app = client_keys(keys, "app")
    x = np.load(repo / "digits" / "v1" / "golden" / "0.input.npy")
    with Client(predict, timeout=30, curve=app) as c:
        assert c.predict(x).model == "digits"
    with Client.control(control, timeout=30, curve=app) as c:
        assert c.status()["state"] == "running"

    for endpoint in (predict, control):
        err = refused(endpoint, client_keys(keys, "stranger"))
        assert err.code is ErrorCode.AUTH_FAILED and "refused this client's CURVE key" in err.message
        err = refused(endpoint, None)
        assert err.code is ErrorCode.AUTH_FAILED and "requires CURVE keys" in err.message
    assert "refused a CURVE client" in d.log()

    # The daemon kept serving through the refusals; the CLI speaks CURVE with flags.
    assert d.proc.poll() is None
    r = d.cli("ctl", "status", "--json", "--control-endpoint", control, "--server-key", str(keys["dir"] / "server.key"),
              "--client-key", str(keys["dir"] / "app.key_secret"))
    assert r.returncode == 0, r.stderr + d.log()
    r = d.cli("ctl", "status", "--control-endpoint", control, "--timeout", "30")
    assert r.returncode == 8 and "AUTH_FAILED" in r.stderr, r.stderr
    r = d.cli("predict", "--endpoint", predict, "--server-key", str(keys["dir"] / "server.key"),
              "--client-key", str(keys["dir"] / "app.key_secret"),
              str(repo / "digits" / "v1" / "golden" / "0.input.npy"))
    assert r.returncode == 0 and "digits/v1" in r.stdout, r.stderr
    assert d.stop() == 0


def test_reload_picks_up_added_and_removed_client_keys(daemon_factory, repo, keys, tmp_path):
    d, predict, control = start_curve_daemon(daemon_factory, repo, keys, tmp_path)
    app, stranger = client_keys(keys, "app"), client_keys(keys, "stranger")
    assert refused(predict, stranger).code is ErrorCode.AUTH_FAILED

    shutil.copy(keys["dir"] / "stranger.key", keys["allowed"] / "stranger.key")
    with Client.control(control, timeout=30, curve=app) as c:
        assert c.call("reload")[0]["restart_needed"] == []
    with Client(predict, timeout=30, curve=stranger) as c:
        assert c.health()["status"] == "ok"

    (keys["allowed"] / "stranger.key").unlink()
    with Client.control(control, timeout=30, curve=app) as c:
        c.call("reload")
    assert refused(predict, stranger).code is ErrorCode.AUTH_FAILED

    # A broken key file refuses the reload and keeps the keys in force.
    (keys["allowed"] / "broken.key").write_text('curve\n    public-key = "short"\n')
    r = d.cli("ctl", "reload", "--control-endpoint", control, "--server-key", str(keys["dir"] / "server.key"),
              "--client-key", str(keys["dir"] / "app.key_secret"))
    assert r.returncode == 7 and "security.client_keys_dir" in r.stderr, r.stderr
    with Client(predict, timeout=30, curve=app) as c:
        assert c.health()["status"] == "ok"
    assert d.stop() == 0


def test_control_keys_dir_keeps_prediction_keys_off_the_control_endpoint(daemon_factory, repo, keys, tmp_path):
    generate(keys["dir"], "admin")
    admins = tmp_path / "admins"
    admins.mkdir(mode=0o755)
    shutil.copy(keys["dir"] / "admin.key", admins / "admin.key")
    d, predict, control = start_curve_daemon(daemon_factory, repo, keys, tmp_path,
                                             f'control_keys_dir = "{admins}"\n')
    app, admin = client_keys(keys, "app"), client_keys(keys, "admin")
    with Client(predict, timeout=30, curve=app) as c:
        assert c.health()["status"] == "ok"
    assert refused(control, app).code is ErrorCode.AUTH_FAILED
    assert refused(predict, admin).code is ErrorCode.AUTH_FAILED
    with Client.control(control, timeout=30, curve=admin) as c:
        assert c.status()["state"] == "running"
        shutil.copy(keys["dir"] / "app.key", admins / "app.key")  # now app may administer too
        assert c.call("reload")[0]["restart_needed"] == []
    with Client.control(control, timeout=30, curve=app) as c:
        assert c.status()["state"] == "running"
    assert "security.control_keys_dir" in d.log()
    assert d.stop() == 0


def test_non_loopback_bind_without_curve_is_refused_at_startup(daemon_factory, repo):
    d = daemon_factory(repo, "--endpoint", f"tcp://0.0.0.0:{free_port()}", "--set", "server.allow_remote=true",
                       ready=False)
    assert d.proc.wait(60) == 7
    assert "needs CURVE" in d.log() and "Traceback" not in d.log()


def test_tcp_control_without_curve_needs_the_explicit_opt_in(daemon_factory, repo):
    control = f"tcp://127.0.0.1:{free_port()}"
    d = daemon_factory(repo, "--control-endpoint", control, ready=False)
    assert d.proc.wait(60) == 7
    assert "security.allow_insecure_tcp_control" in d.log() and "Traceback" not in d.log()

    d = daemon_factory(repo, "--control-endpoint", control, "--set", "security.allow_insecure_tcp_control=true",
                       ready=False)
    d.wait_ready()
    with Client.control(control, timeout=30) as c:
        assert c.status()["state"] == "running"
    assert d.stop() == 0
