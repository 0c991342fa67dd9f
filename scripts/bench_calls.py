#!/usr/bin/env python3
"""How many Python-level calls the daemon makes for one lone predict (docs/benchmarks.md, round 5).

At concurrency 1 every step of the daemon's request path runs from a cold cache: the
``invoke()`` before it evicts what the previous request touched.  The cost of that
path then follows how much interpreted code it runs, so this script counts it, which
timing on a shared box cannot do exactly: a real daemon (``Daemon``, default config,
the bundled ``models/`` repository) in this process, a real DEALER client on a private
``ipc://`` endpoint, and ``sys.setprofile`` around one ``Daemon._read`` that receives,
runs inline and answers one predict, its bookkeeping included.

Usage::

    python scripts/bench_calls.py [--list]     # --list: every function and how often it ran
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from edged import config as config_mod  # noqa: E402
from edged import protocol  # noqa: E402
from edged.server.daemon import Daemon  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="print every function called and how often")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edged-calls-", dir="/tmp"))
    try:
        shutil.copytree(ROOT / "models", tmp / "models", symlinks=True)
        cfg = config_mod.load(None, {"server.endpoint": f"ipc://{tmp}/p.sock",
                                     "server.control_endpoint": f"ipc://{tmp}/c.sock",
                                     "repository.path": str(tmp / "models"), "repository.watch": False,
                                     "power.enabled": False})
        daemon = Daemon(cfg)
        daemon.startup()
        ctx = zmq.Context()
        client = ctx.socket(zmq.DEALER)
        client.setsockopt(zmq.RCVTIMEO, 10_000)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(cfg.server.endpoint)
        try:
            calls = _count(daemon, client)
        finally:
            client.close(0)
            ctx.term()
            daemon.close(graceful=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    py = {k: v for k, v in calls.items() if not k.startswith("C ")}
    print(f"one inline predict: {sum(py.values())} Python-level calls, "
          f"{sum(calls.values()) - sum(py.values())} calls of C functions")
    if args.list:
        for name, n in sorted(calls.items()):
            print(f"{n:4d}  {name}")
    return 0


def _count(daemon: Daemon, client: zmq.Socket) -> collections.Counter[str]:
    model = daemon.models.get(None)
    x = np.zeros(model.inputs[0].shape, model.inputs[0].dtype)

    def send(i: int) -> None:
        client.send_multipart([protocol.dumps({"v": 1, "id": str(i), "op": "predict",
                                               "inputs": [protocol.tensor_meta(x)]}), x.tobytes()])
        deadline = time.monotonic() + 10
        while not daemon.predict_sock.poll(100):
            if time.monotonic() > deadline:
                raise RuntimeError("the request never reached the daemon")

    # Warm up until requests run inline (the first ones go to a worker: no invoke time yet).
    for i in range(20):
        send(i)
        daemon._read("predict", daemon.predict_sock)
        time.sleep(0.02)
        daemon._flush_outbox()  # replies the workers computed
        client.recv_multipart()
    runs = daemon.inline_runs
    calls: collections.Counter[str] = collections.Counter()
    root = str(ROOT) + "/"

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            calls[f"{code.co_filename.replace(root, '').split('site-packages/')[-1]}:{code.co_name}"] += 1
        elif event == "c_call":
            calls[f"C {getattr(arg, '__qualname__', arg)}"] += 1

    send(99)
    sys.setprofile(profile)
    try:
        daemon._read("predict", daemon.predict_sock)
    finally:
        sys.setprofile(None)
    client.recv_multipart()
    if daemon.inline_runs != runs + 1:
        raise RuntimeError("the measured request did not run inline; the count would not be the lone-request path")
    return calls


if __name__ == "__main__":
    sys.exit(main())
