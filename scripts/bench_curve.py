#!/usr/bin/env python3
"""What CURVE costs: request latency and connection set-up, ipc:// vs tcp:// vs tcp:// + CURVE.

One ``edged serve`` per transport on the bundled digits model (an 8×8 float32
input: 256 bytes, so the figures are the per-message cost of the transport and
its encryption, not of the payload), then, with :class:`edged.client.Client`:

1. **Sequential latency** – ``--n`` predicts one after another: p50/p99/mean.
2. **150 KB request** – ``--n`` requests carrying a 150528-byte frame (the
   MobileNet-class input size) that the daemon refuses at once (``BAD_SHAPE``
   for this model): the cost of moving, and with CURVE decrypting, that many
   bytes, without inference.
3. **Connection set-up** – ``--connects`` times: a new client, its first
   ``health`` reply (includes the CURVE handshake and the ZAP check), closed.

Usage::

    python scripts/bench_curve.py [--n 2000] [--connects 200] [--out FILE.json]

Every loop is bounded; only ipc:// and 127.0.0.1 traffic.  Timings on a shared
machine are noisy: compare the three rows of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edged.client import Client  # noqa: E402
from edged.curve import ClientKeys, generate  # noqa: E402
from edged.errors import RequestError, TransportError  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stats_ms(seconds: list[float]) -> dict[str, Any]:
    a = np.asarray(seconds) * 1000
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 4),
            "p99_ms": round(float(np.percentile(a, 99)), 4), "mean_ms": round(float(a.mean()), 4)}


def serve(workdir: Path, tag: str, endpoint: str, config: str) -> subprocess.Popen:
    (workdir / f"{tag}.toml").write_text(config)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    for k in ("NOTIFY_SOCKET", "EDGED_CONFIG", "EDGED_ENDPOINT", "EDGED_CONTROL_ENDPOINT"):
        env.pop(k, None)
    log = open(workdir / f"{tag}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "edged", "serve", "--models", str(workdir / "models"),
                             "--endpoint", endpoint, "--control-endpoint", f"ipc://{workdir}/{tag}-c.sock",
                             "--workers", "1", "--config", str(workdir / f"{tag}.toml")],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_ready(proc: subprocess.Popen, endpoint: str, curve: ClientKeys | None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon for {endpoint} exited with {proc.returncode}")
        try:
            with Client(endpoint, timeout=0.5, curve=curve) as c:
                c.health()
                return
        except TransportError:
            continue
    raise RuntimeError(f"daemon for {endpoint} not ready in 60 s")


def measure(endpoint: str, curve: ClientKeys | None, x: np.ndarray, n: int, connects: int) -> dict[str, Any]:
    lat: list[float] = []
    limit = time.monotonic() + 120
    with Client(endpoint, timeout=10, curve=curve) as c:
        for _ in range(50):
            c.predict(x)
        for _ in range(n):
            t0 = time.perf_counter()
            c.predict(x)
            lat.append(time.perf_counter() - t0)
            if time.monotonic() > limit:
                break
    big, big_meta = np.zeros(150528, np.uint8), [{"dtype": "uint8", "shape": [1, 150528]}]
    big_lat: list[float] = []
    limit = time.monotonic() + 120
    with Client(endpoint, timeout=10, curve=curve) as c:
        for i in range(n + 20):
            t0 = time.perf_counter()
            try:
                c.call("predict", [big], inputs=big_meta)
                raise RuntimeError("a 150 KB request to the digits model was accepted")
            except RequestError:
                pass
            if i >= 20:
                big_lat.append(time.perf_counter() - t0)
            if time.monotonic() > limit:
                break
    setup: list[float] = []
    limit = time.monotonic() + 120
    for _ in range(connects):
        t0 = time.perf_counter()
        with Client(endpoint, timeout=10, curve=curve) as c:
            c.health()
        setup.append(time.perf_counter() - t0)
        if time.monotonic() > limit:
            break
    return {"predict": stats_ms(lat), "request_150kb": stats_ms(big_lat), "connect_and_first_reply": stats_ms(setup)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--connects", type=int, default=200)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="edged-bc-", dir="/tmp"))
    procs: list[subprocess.Popen] = []
    try:
        shutil.copytree(ROOT / "models", workdir / "models", symlinks=True)
        keys = workdir / "keys"
        allowed = workdir / "allowed"
        allowed.mkdir(mode=0o755)
        generate(keys, "server")
        generate(keys, "bench")
        shutil.copy(keys / "bench.key", allowed / "bench.key")
        curve = ClientKeys.from_files(keys / "server.key", keys / "bench.key_secret")
        security = (f'[security]\nserver_secret_key = "{keys / "server.key_secret"}"\n'
                    f'client_keys_dir = "{allowed}"\n')
        x = np.load(workdir / "models" / "digits" / "v1" / "golden" / "0.input.npy")
        runs = [("ipc", f"ipc://{workdir}/p.sock", "", None),
                ("tcp", f"tcp://127.0.0.1:{free_port()}", "", None),
                ("tcp+curve", f"tcp://127.0.0.1:{free_port()}", security, curve)]
        result: dict[str, Any] = {"model": "digits/v1 (256-byte input)", "n": args.n, "connects": args.connects}
        for tag, endpoint, config, keys_for in runs:
            proc = serve(workdir, tag.replace("+", "-"), endpoint, config)
            procs.append(proc)
            wait_ready(proc, endpoint, keys_for)
            result[tag] = measure(endpoint, keys_for, x, args.n, args.connects)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        print(f"{'transport':<10} {'predict p50 / p99 (ms)':>24} {'150 KB p50 / p99':>20} {'connect p50 / p99':>20}")
        for tag, *_ in runs:
            cells = [f"{result[tag][k]['p50_ms']:.3f} / {result[tag][k]['p99_ms']:.3f}"
                     for k in ("predict", "request_150kb", "connect_and_first_reply")]
            print(f"{tag:<10} {cells[0]:>24} {cells[1]:>20} {cells[2]:>20}")
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
