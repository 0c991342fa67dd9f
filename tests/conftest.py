"""Shared fixtures: a real daemon in a subprocess on temporary ipc:// endpoints."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODELS = ROOT / "models"


def runtime_choice() -> str:
    """The backend the tests use: $EDGED_RUNTIME (CI runs the suite again with tflite-runtime)."""
    return os.environ.get("EDGED_RUNTIME", "auto")


@pytest.fixture
def runtime() -> str:
    """The runtime name to hand to edged (``pack``, checks, config): the one this CI leg selects."""
    return runtime_choice()


@pytest.fixture
def backend(runtime: str):
    from edged.runtime.backends import select_backend

    return select_backend(runtime)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a run that asked for one runtime ($EDGED_RUNTIME) but loaded another in process.

    The tflite-runtime CI leg has LiteRT installed too (a core dependency), and anything
    that asks for ``auto`` gets LiteRT: a test doing that would pass under the leg's name
    while testing the other runtime.  Daemons and validation children are checked where
    they start (:meth:`DaemonProcess.wait_ready`, the tests of the check report).
    """
    from edged.runtime.backends import CANDIDATES

    chosen = runtime_choice()
    if chosen not in CANDIDATES:
        return
    # The interpreter modules only: the test models are built with LiteRT's flatbuffer schema.
    others = sorted(module for name, (module, _) in CANDIDATES.items() if name != chosen and module in sys.modules)
    if others:
        session.config.get_terminal_writer().line(
            f"EDGED_RUNTIME={chosen}, but the tests loaded {', '.join(others)}: something ran another "
            f"runtime (runtime='auto'?)", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # ipc:// paths are limited to ~107 bytes, so not pytest's (long) tmp_path.
    path = Path(tempfile.mkdtemp(prefix="edged-t-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A private copy of the bundled model repository."""
    dest = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS, dest, symlinks=True)
    return dest


class DaemonProcess:
    """``edged serve`` as a subprocess; ``stop()`` sends SIGTERM and returns the exit status."""

    def __init__(self, models: Path, sockdir: Path, args: list[str], env: dict[str, str],
                 endpoint: str | None = None, control_endpoint: str | None = None) -> None:
        self.endpoint = endpoint or f"ipc://{sockdir}/p.sock"
        self.control_endpoint = control_endpoint or f"ipc://{sockdir}/c.sock"
        self.log_path = sockdir / f"daemon-{id(self)}.log"
        self.env = {**os.environ, "EDGED_ENDPOINT": self.endpoint, "EDGED_CONTROL_ENDPOINT": self.control_endpoint,
                    "EDGED_RUNTIME": runtime_choice(), "PYTHONUNBUFFERED": "1", **env}
        self.env.pop("NOTIFY_SOCKET", None) if "NOTIFY_SOCKET" not in env else None
        cmd = [sys.executable, "-m", "edged", "serve", "--models", str(models), "--endpoint", self.endpoint,
               "--control-endpoint", self.control_endpoint, *args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=str(ROOT))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until ``health`` answers; fail with the daemon's log if it exits or never answers."""
        from edged.client import Client
        from edged.errors import TransportError

        deadline = time.monotonic() + timeout
        with Client(self.endpoint, timeout=0.5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"daemon exited with {self.proc.returncode} before ready:\n{self.log()}")
                try:
                    c.health()
                except TransportError as exc:
                    if exc.code.value == "NOT_RUNNING":
                        time.sleep(0.05)  # no socket yet: the client fails at once, so do not spin
                    continue
                self._check_runtime()
                return
        pytest.fail(f"daemon not ready after {timeout}s:\n{self.log()}")

    def _check_runtime(self) -> None:
        """A daemon started for a CI leg that names a runtime must run that runtime."""
        chosen = self.env.get("EDGED_RUNTIME", "auto")
        if chosen == "auto":
            return
        # The start line names it and needs no endpoint (a test may pass its own in args).
        found = re.search(r"starting: runtime (\S+)", self.log())
        if found:
            running = found.group(1)
        else:  # a log level above INFO: ask the daemon
            with self.control() as ctl:
                running = ctl.status()["runtime"].split()[0]
        assert running == chosen, f"EDGED_RUNTIME={chosen} but the daemon runs {running}:\n{self.log()}"

    def client(self, timeout: float = 10.0):
        from edged.client import Client

        return Client(self.endpoint, timeout=timeout)

    def control(self, timeout: float = 30.0):
        from edged.client import Client

        return Client.control(self.control_endpoint, timeout=timeout)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout, cwd=str(ROOT))

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` (None: it was already sent) and wait for the exit status."""
        if self.proc.poll() is None:
            if sig is not None:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"daemon did not stop within {timeout}s:\n{self.log()}")
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def daemon_factory(sockdir: Path) -> Iterator:
    started: list[DaemonProcess] = []

    def start(models: Path, *args: str, env: dict[str, str] | None = None, ready: bool = True,
              endpoint: str | None = None, control_endpoint: str | None = None) -> DaemonProcess:
        d = DaemonProcess(models, sockdir, list(args), env or {}, endpoint, control_endpoint)
        started.append(d)
        if ready:
            d.wait_ready()
        return d

    yield start
    for d in started:
        d.kill()


@pytest.fixture
def daemon(daemon_factory, repo: Path) -> DaemonProcess:
    """A daemon serving a copy of the bundled repository."""
    return daemon_factory(repo)


#: How long a thread a test started may take to finish after the test (a thread told to stop
#: just before the end may still be on its way out on a loaded machine); a leak never ends.
THREAD_EXIT_GRACE_S = 10.0


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Every thread a test starts has ended by its end, daemon threads included.

    All of edged's own threads (workers, swapper, watcher, metrics) are daemon
    threads, so the guard compares with the set of threads alive before the test
    rather than skipping daemon threads.  Objects, not idents: an ident is reused.
    """
    before = set(threading.enumerate())
    yield
    started = [t for t in threading.enumerate() if t not in before]
    deadline = time.monotonic() + THREAD_EXIT_GRACE_S
    for t in started:
        t.join(max(0.0, deadline - time.monotonic()))
    leaked = [t for t in started if t.is_alive()]
    assert not leaked, f"threads leaked by the test: {leaked}"
