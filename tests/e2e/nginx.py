"""A real nginx serving a directory on a loopback port, for the update tests.

The tests generate the config (a temporary prefix, ``daemon off``, an access log
in a format that is easy to count) and start nginx as a child; ``.ci/run``
installs Debian's nginx when it is missing.  Tests skip, naming it, only when no
nginx binary can be found.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """``nginx -p PREFIX -c CONF`` in the foreground; ``restart(limit_rate=…)`` keeps the port and the log."""

    def __init__(self, root: Path, prefix: Path, *, limit_rate: str = "0") -> None:
        binary = nginx_binary()
        if binary is None:
            pytest.skip("nginx not installed")
        self.binary = binary
        self.root = root
        self.prefix = prefix
        self.port = free_port()
        self.access_log = prefix / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self.start(limit_rate)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self, limit_rate: str) -> Path:
        p = self.prefix
        # As root, workers would switch to "nobody", who cannot read pytest's 0700 temp dirs.
        user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
        conf = p / "nginx.conf"
        conf.write_text(f"""
{user}
worker_processes 1;
daemon off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format edged '$request_method $request_uri $status $body_bytes_sent $bytes_sent $request_length "$http_range"';
    access_log {self.access_log} edged flush=100ms buffer=4k;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location / {{
            limit_rate {limit_rate};
        }}
    }}
}}
""")
        return conf

    def start(self, limit_rate: str = "0") -> None:
        conf = self._config(limit_rate)
        log = open(self.prefix / "stderr.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-p", str(self.prefix), "-c", str(conf), "-e",
                                      str(self.prefix / "error.log")], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {self.errors()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {self.port}: {self.errors()}")

    def errors(self) -> str:
        parts = []
        for name in ("error.log", "stderr.log"):
            try:
                parts.append((self.prefix / name).read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown: drops open transfers
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, limit_rate: str = "0") -> None:
        self.stop()
        self.start(limit_rate)

    def requests(self) -> list[dict[str, str]]:
        """Every logged request (the log is flushed within 100 ms).

        Keys: method, path, status, bytes (body), sent (with headers), received (request with headers), range.
        """
        time.sleep(0.3)
        try:
            lines = self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            method, path, status, size, sent, received, rng = line.split(" ", 6)
            out.append({"method": method, "path": path, "status": status, "bytes": size, "sent": sent,
                        "received": received, "range": rng.strip('"')})
        return out

    def target_requests(self) -> list[dict[str, str]]:
        return [r for r in self.requests() if r["path"].startswith("/targets/")]
