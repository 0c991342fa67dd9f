#!/usr/bin/env python3
"""Remote updates: bytes per idle check, and the time from ``edged registry publish`` to serving.

Everything is real: ``edged registry`` builds a TUF registry, Debian's nginx
serves it on a loopback port (the same generated config as the e2e tests,
tests/e2e/nginx.py), and one ``edged serve`` with ``[update] strategy = "off"``
checks it on ``edged ctl update check``.  Figures:

1. **Idle check** – ``--idle`` checks with nothing new: requests and bytes per
   check as nginx logged them (``$bytes_sent``: headers and body sent;
   ``$request_length``: the request with its headers), and the bytes of
   metadata bodies the device counted.
2. **Publish to serving** – for each model size: the wall time of
   ``edged registry publish`` (validation and signing), of the check that
   downloads and installs the version, and until ``versions`` shows it serving
   (validation in a child, load, swap).  With ``strategy = "periodic"`` the wait
   for the next check (``interval_s`` ± jitter) comes on top.

Usage::

    python scripts/bench_update.py [--idle N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged.client import Client  # noqa: E402
from edged.testing import tflite_build as tb  # noqa: E402
from tests.e2e.nginx import Nginx  # noqa: E402
from tests.e2e.repohelpers import publish  # noqa: E402


def edged(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> dict:
    """``python -m edged ARGS --json`` from the checkout, its JSON reply; ``SystemExit`` with its stderr if it fails.

    Also used by ``scripts/fleet_sim.py``.
    """
    r = subprocess.run([sys.executable, "-m", "edged", *args, "--json"], capture_output=True, text=True,
                       cwd=str(ROOT), env=env, timeout=timeout)
    if r.returncode:
        raise SystemExit(f"edged {' '.join(args)} failed: {r.stderr}")
    return json.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--idle", type=int, default=20, help="idle checks to average (default 20)")
    ap.add_argument("--out", default=None, help="also write the figures as JSON")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edged-bench-update-", dir="/tmp"))
    reg, keys, repo = tmp / "reg", tmp / "keys", tmp / "device"
    edged("registry", "init", str(reg), "--keys", str(keys))
    publish(repo, "v1", tb.random_classifier(seed=1), tmp=tmp)
    (tmp / "nginx").mkdir()
    server = Nginx(reg, tmp / "nginx")
    env = {**os.environ, "EDGED_ENDPOINT": f"ipc://{tmp}/p.sock", "EDGED_CONTROL_ENDPOINT": f"ipc://{tmp}/c.sock"}
    log = open(tmp / "daemon.log", "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "edged", "serve", "--models", str(repo),
                               "--set", f'update.url="{server.url}"',
                               "--set", f'update.root="{reg}/metadata/1.root.json"',
                               "--set", 'update.device_id="bench"', "--set", "repository.settle_s=0.2"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    figures: dict = {"publish_to_serving": []}
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([sys.executable, "-m", "edged", "health", "--timeout", "1"], env=env, cwd=str(ROOT),
                             capture_output=True).returncode:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("daemon did not start:\n" + (tmp / "daemon.log").read_text())
            time.sleep(0.2)
        edged("ctl", "update", "check", env=env)  # first contact: root, timestamp, snapshot, targets, index
        for n, (label, model) in enumerate([("3.5 kB classifier", tb.random_classifier(seed=2)),
                                            ("300 kB classifier", tb.random_classifier(seed=3, hidden=(1024,)))]):
            version = f"v{n + 2}"
            src = publish(tmp / "src", version, model, tmp=tmp)
            t0 = time.monotonic()
            edged("registry", "publish", str(src), "--registry", str(reg), "--keys", str(keys))
            t1 = time.monotonic()
            result = edged("ctl", "update", "check", env=env)
            t2 = time.monotonic()
            assert result["installed"] == [f"m/{version}"], result
            with Client.control(env["EDGED_CONTROL_ENDPOINT"], timeout=30) as c:
                while c.call("versions", model="m")[0]["serving"] != version:
                    if time.monotonic() - t2 > 120:
                        raise SystemExit(f"{version} never served:\n" + (tmp / "daemon.log").read_text())
                    time.sleep(0.02)
            t3 = time.monotonic()
            row = {"model": label, "bytes": len(model), "publish_s": round(t1 - t0, 2), "check_s": round(t2 - t1, 2),
                   "validate_swap_s": round(t3 - t2, 2), "total_s": round(t3 - t0, 2),
                   "check_requests": result["requests"], "check_body_bytes": result["bytes"]}
            figures["publish_to_serving"].append(row)
            print(f"publish -> serving, {label}: publish {row['publish_s']} s, check+download "
                  f"{row['check_s']} s, validate+swap {row['validate_swap_s']} s, total {row['total_s']} s")
        before = len(server.requests())
        bodies = []
        for _ in range(args.idle):
            r = edged("ctl", "update", "check", env=env)
            assert r["ok"] and not r["installed"], r
            bodies.append(r["bytes"])
        idle = server.requests()[before:]
        per = {"requests": len(idle) / args.idle,
               "sent_bytes": sum(int(r["sent"]) for r in idle) / args.idle,
               "received_bytes": sum(int(r["received"]) for r in idle) / args.idle,
               "body_bytes": sum(bodies) / args.idle,
               "paths": sorted({r["path"] for r in idle})}
        figures["idle_check"] = per
        print(f"idle check ({args.idle} checks): {per['requests']:.1f} requests, {per['sent_bytes']:.0f} bytes "
              f"from the server (headers included; {per['body_bytes']:.0f} of metadata body), "
              f"{per['received_bytes']:.0f} bytes of requests; paths {per['paths']}")
    finally:
        daemon.terminate()
        daemon.wait(30)
        server.stop()
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
