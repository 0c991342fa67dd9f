"""A second process must not corrupt the first (issue 11, items 4 and 5).

A second ``edged serve`` on the same runtime directory or the same repository exits
with a clear message having changed nothing – not the live daemon's socket files,
not ``state.json``, not the ``current`` links – even when the live daemon is stopped
by SIGSTOP and cannot answer.  A socket directory another user could write is refused
by the daemon and by the client.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edged.client import Client
from edged.errors import TransportError
from edged.testing import tflite_build as tb
from tests.conftest import ROOT, DaemonProcess
from tests.e2e.repohelpers import publish, state_of, wait_until
from tests.e2e.test_repository import config

pytestmark = [pytest.mark.e2e]

DARK = np.zeros((1, 8, 8, 1), np.float32)


@pytest.fixture
def mrepo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    publish(repo, "v1", tb.random_classifier(seed=1), tmp=tmp_path)
    return repo


@pytest.fixture
def other_sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edged-o-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def snapshot(sockdir: Path, repo: Path) -> dict[str, object]:
    """What a second daemon must not change: socket inodes, the state file, the links."""
    socks = {p.name: p.stat().st_ino for p in sockdir.iterdir() if p.suffix == ".sock"}
    links = {m.name: os.readlink(m / "current") for m in repo.iterdir() if (m / "current").is_symlink()}
    return {"sockets": socks, "state": (repo / ".edged" / "state.json").read_bytes(), "links": links}


def start_second(repo: Path, sockdir: Path, cfg: Path) -> DaemonProcess:
    d = DaemonProcess(repo, sockdir, ["--config", str(cfg)], {})
    try:
        assert d.proc.wait(60) != 0, f"the second daemon started:\n{d.log()}"
    except subprocess.TimeoutExpired:
        pytest.fail(f"the second daemon is still running:\n{d.log()}")
    finally:
        d.kill()
    return d


@pytest.mark.runtime
@pytest.mark.parametrize("stopped", [False, True], ids=["running", "sigstopped"])
@pytest.mark.parametrize("shared", ["runtime-dir", "repository"])
def test_a_second_daemon_changes_nothing_of_a_live_one_on_probation(
        daemon_factory, mrepo, tmp_path, sockdir, other_sockdir, stopped, shared):
    cfg = config(tmp_path)
    d = daemon_factory(mrepo, "--config", str(cfg))
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    with d.client() as c:
        wait_until(lambda: c.predict(DARK).version == "v2", "v2 on probation", daemon=d)
    assert state_of(d, "v2")["state"] == "probation"
    before = snapshot(sockdir, mrepo)
    assert "events.sock" in before["sockets"]
    if stopped:
        d.send_signal(signal.SIGSTOP)  # stalled: it cannot answer a probe, but it is alive
    try:
        if shared == "runtime-dir":  # same sockets, another repository
            other_repo = tmp_path / "other"
            publish(other_repo, "v1", tb.random_classifier(seed=3), tmp=tmp_path)
            second = start_second(other_repo, sockdir, cfg)
            what = f"runtime directory {sockdir}"
        else:  # same repository, other sockets
            second = start_second(mrepo, other_sockdir, cfg)
            what = f"repository {mrepo}"
        assert snapshot(sockdir, mrepo) == before
        assert f"already serving {what}" in second.log() and f"pid {d.proc.pid}" in second.log()
        assert "changed nothing" in second.log()
    finally:
        if stopped:
            d.send_signal(signal.SIGCONT)
    with d.client() as c:
        assert c.predict(DARK).version == "v2"
    assert state_of(d, "v2")["state"] == "probation"
    assert d.stop() == 0


def test_after_the_first_daemon_stops_the_next_one_starts(daemon_factory, repo):
    d = daemon_factory(repo)
    assert d.stop() == 0
    d2 = daemon_factory(repo)  # locks released on exit
    with d2.client() as c:
        assert c.health()["status"] == "ok"


def test_after_kill_9_the_locks_are_free(daemon_factory, repo):
    d = daemon_factory(repo)
    d.proc.kill()
    d.proc.wait(30)
    d2 = daemon_factory(repo)  # the kernel dropped the flock with its holder
    with d2.client() as c:
        assert c.health()["status"] == "ok"


def serve(repo: Path, sockdir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``edged serve`` with endpoints in ``sockdir``, expected to refuse to start."""
    environ = {**os.environ, "EDGED_RUNTIME": os.environ.get("EDGED_RUNTIME", "auto"), **(env or {})}
    for key in ("EDGED_ENDPOINT", "EDGED_CONTROL_ENDPOINT", "NOTIFY_SOCKET"):
        environ.pop(key, None)
    return subprocess.run([sys.executable, "-m", "edged", "serve", "--models", str(repo),
                           "--endpoint", f"ipc://{sockdir}/p.sock", "--control-endpoint", f"ipc://{sockdir}/c.sock"],
                          capture_output=True, text=True, env=environ, timeout=60, cwd=str(ROOT))


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o757], ids=oct)
def test_a_socket_directory_others_can_write_is_refused_by_daemon_and_client(repo, other_sockdir, mode):
    os.chmod(other_sockdir, mode)
    (other_sockdir / "p.sock").touch()  # as if planted by another user
    r = serve(repo, other_sockdir)
    assert r.returncode == 7, r.stderr
    assert "writable by others" in r.stderr and f"{other_sockdir}" in r.stderr
    assert sorted(p.name for p in other_sockdir.iterdir()) == ["p.sock"]  # nothing created, nothing removed
    with pytest.raises(TransportError, match="writable by others") as info:
        with Client(f"ipc://{other_sockdir}/p.sock", timeout=1) as c:
            c.health()
    assert info.value.exit_status == 7


def test_the_fallback_runtime_directory_of_another_owner_is_refused(repo, tmp_path):
    # /tmp/edged-<uid> made by someone else: simulated with a directory whose owner is not us.
    if os.geteuid() != 0:
        pytest.skip("needs root to create a directory owned by another user (chown)")
    rundir = Path(tempfile.mkdtemp(prefix="edged-f-", dir="/tmp"))
    try:
        os.chown(rundir, 65534, 65534)
        r = serve(repo, rundir)
        assert r.returncode == 7 and "belongs to uid 65534" in r.stderr, r.stderr
        with pytest.raises(TransportError, match="belongs to uid 65534"):
            with Client(f"ipc://{rundir}/p.sock", timeout=1) as c:
                c.health()
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
