#!/usr/bin/env python3
"""Per-client fairness: a polite client's latency while another client floods the predict socket.

One ``edged serve`` (2 workers, the MobileNet-class model of ``scripts/bench.py``:
≈5 ms per invoke with 1 thread) serves two kinds of client:

* the **polite** client (this process, one DEALER connection): one predict every
  ``--interval-ms`` (default 20 ms, a 50 fps camera), waiting for each reply; its
  round-trip latency is what is reported (p50/p99/max, and how many of its
  requests were refused with ``THROTTLED``);
* the **flooder** (a subprocess, one DEALER connection): keeps ``--inflight``
  (default 200, far more than ``server.queue_size`` = 64) predicts outstanding
  and sends a new one the moment any reply (answer or refusal) arrives: the most
  a single connection can ask for.  If it exits before the measured window ends, the
  run fails (exit 1) rather than report a polite figure measured without a flood.
  Alive is not enough: it reports its counts at both ends of the window, and the run
  also fails when it got fewer predicts answered in the window than the polite client
  sent (``FLOOD_MIN_PER_POLITE``, see :func:`check_flood_rate`): then it was not flooding.

Scenarios, each on a fresh daemon: ``alone`` (no flooder), then one ``flood``
run per value of ``--shares`` (``server.max_queued_per_client``; 0 = the default,
no cap: round robin and push-out only; ``none`` = do not write the key, for a
checkout that predates it).  The figure of merit is the polite p99 under flood against
the polite p99 alone.

Usage::

    python scripts/bench_fairness.py [--quick] [--shares 0,64] [--out FILE.json]

Only ipc:// traffic; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # scripts/bench.py; importing it also puts the checkout on sys.path
from bench import INPUT_SHAPE, bench_env, bench_input, log, machine_facts, ms, scratch, start_daemon

#: The polite client gives up after this long, whatever ``--quick`` says.
POLITE_LIMIT_S = 300.0

#: The least the flooder must get answered (``ok`` replies) in the measured window, per polite request.
#: A floor, not an expectation: with 2 workers, the polite client holding at most one request
#: at a time and the flooder always having work queued, the flooder runs on the other worker
#: whenever the polite request runs, so a working flood gets at least one answer per polite
#: request (about 2 when invokes are slower than the polite period) and usually several
#: (docs/benchmarks.md). Below it the flooder is stuck, not reaching the daemon, or sending
#: predicts the daemon refuses or fails, and the polite figure is no fairness figure.
FLOOD_MIN_PER_POLITE = 1.0

#: How long the flooder may take to report its counts (it answers between two replies).
FLOOD_REPORT_S = 30.0


def role_flood(args: dict[str, Any]) -> int:
    """Keep ``inflight`` predicts outstanding until ``stop_at`` or stdin's end.

    Each line on stdin is answered with one line on stdout, the counts so far:
    ``{"sent": n, "replies": {"ok": n, CODE: n}}`` (the parent reads them at both ends
    of its measured window, see :func:`flood_counts`).
    """
    import zmq

    payload = memoryview(bench_input()).cast("B")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args["endpoint"])
    meta = [{"dtype": "uint8", "shape": list(INPUT_SHAPE)}]
    stop_at = float(args["stop_at"])
    sent, codes = 0, {}
    stdin = sys.stdin.fileno()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(stdin, zmq.POLLIN)

    def send() -> None:
        nonlocal sent
        header = {"v": 1, "id": sent, "op": "predict", "inputs": meta}
        sock.send_multipart([json.dumps(header, separators=(",", ":")).encode(), payload], copy=False)
        sent += 1

    for _ in range(int(args["inflight"])):
        send()
    for _ in range(100_000_000):
        if time.monotonic() >= stop_at:
            break
        ready = dict(poller.poll(50))
        if sock in ready:
            head = json.loads(sock.recv_multipart()[0])
            code = "ok" if head.get("ok") else head["error"]["code"]
            codes[code] = codes.get(code, 0) + 1
            send()
        if stdin in ready:
            asked = os.read(stdin, 4096)
            if not asked:
                break  # the parent is gone
            for _ in range(asked.count(b"\n")):
                # One short line is one write() on a pipe, so the parent never reads half of it.
                os.write(sys.stdout.fileno(), (json.dumps({"sent": sent, "replies": codes}) + "\n").encode())
    sock.close(0)
    ctx.term()
    return 0


def polite(endpoint: str, n: int, interval_s: float) -> dict[str, Any]:
    from edged.client import Client
    from edged.errors import Throttled

    x = bench_input()
    lat, throttled = [], 0
    limit = time.monotonic() + POLITE_LIMIT_S
    with Client(endpoint, timeout=30.0) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                c.predict(x)
                lat.append(time.perf_counter() - t0)
            except Throttled:
                throttled += 1
            time.sleep(max(0.0, interval_s - (time.perf_counter() - t0)))
            if time.monotonic() > limit:
                break
    out = ms(lat)
    out["max_ms"] = round(max(lat) * 1000, 3) if lat else None
    out["throttled"] = throttled
    out["requests"] = len(lat) + throttled
    return out


def check_flooder(proc: subprocess.Popen, when: str) -> None:
    """Raise ``SystemExit`` if the flooder has exited: a polite figure without a flood is no fairness figure.

    Its traceback, if any, is above on stderr (inherited).  Checked before and after the measured window:
    a process that runs at the end ran throughout.
    """
    rc = proc.poll()
    if rc is not None:
        raise SystemExit(f"bench_fairness: the flooder exited (code {rc}) {when}; the polite latency would be "
                         "measured without a flood, so there is no result. See its output above.")


def flood_counts(proc: subprocess.Popen, when: str) -> dict[str, Any]:
    """The flooder's counts so far (``role_flood`` answers a line on its stdin with them).

    Raises ``SystemExit`` when it has exited or does not answer within ``FLOOD_REPORT_S``.
    """
    check_flooder(proc, when)
    try:
        os.write(proc.stdin.fileno(), b"count\n")  # a few bytes into an empty pipe: never blocks
    except BrokenPipeError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        check_flooder(proc, when)
        raise SystemExit(f"bench_fairness: the flooder closed its input {when}; there is no result.") from None
    deadline, got = time.monotonic() + FLOOD_REPORT_S, b""
    while not got.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise SystemExit(f"bench_fairness: the flooder did not report its counts within {FLOOD_REPORT_S:.0f}s "
                             f"{when}; it is stuck, so there is no result.")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:  # its stdout is closed: it has exited or is about to
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            check_flooder(proc, when)
            raise SystemExit(f"bench_fairness: the flooder closed its output {when}; there is no result.")
        got += chunk
    return json.loads(got)


def check_flood_rate(start: dict[str, Any], end: dict[str, Any], polite_requests: int) -> dict[str, Any]:
    """The flooder's traffic in the measured window; ``SystemExit`` when it is below the floor.

    The floor is ``FLOOD_MIN_PER_POLITE`` answered predicts per polite request (why: see there).
    """
    replies = {code: n - start["replies"].get(code, 0) for code, n in end["replies"].items()}
    window = {"sent": end["sent"] - start["sent"], "replies": {c: n for c, n in replies.items() if n},
              "ok_per_polite_request": round(replies.get("ok", 0) / max(polite_requests, 1), 2)}
    floor = FLOOD_MIN_PER_POLITE * polite_requests
    if replies.get("ok", 0) < floor:
        raise SystemExit(f"bench_fairness: the flooder got {replies.get('ok', 0)} predicts answered during the "
                         f"measured window (sent {window['sent']}, replies {window['replies']}), fewer than "
                         f"{floor:.0f} ({FLOOD_MIN_PER_POLITE:g} per polite request, {polite_requests} polite "
                         "requests): it was not flooding, so the polite latency is no fairness figure.")
    return window


def scenario(workdir: Path, daemons: list, repo: Path, env: dict[str, str], args: argparse.Namespace, tag: str,
             share: str | None, flood: bool) -> dict[str, Any]:
    conf = "[server]\nworkers = 2\nqueue_size = 64\n"
    if share not in (None, "none"):
        conf += f"max_queued_per_client = {int(share)}\n"
    (workdir / "edged.toml").write_text(conf)
    d = start_daemon(daemons, repo, f"ipc://{workdir}/{tag}.sock", f"ipc://{workdir}/{tag}-c.sock", workdir,
                     args.runtime, 2, env, tag)
    n = 150 if args.quick else 1000
    proc = None
    try:
        if flood:
            # The flooder's own deadline only bounds an orphan: it lies past the polite client's, so a slow
            # polite run is never measured partly without a flood; the finally below kills it.
            stop_at = time.monotonic() + 3.0 + POLITE_LIMIT_S + 60
            proc = bench.spawn_role("flood", {"endpoint": d.endpoint, "inflight": args.inflight, "stop_at": stop_at},
                                    env, script=Path(__file__).resolve(), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)
            time.sleep(3.0)  # the flood is established (imports, first replies) before measuring
            start = flood_counts(proc, "before the measured window")
        result = {"share": share, "flood": flood, "polite": polite(d.endpoint, n, args.interval_ms / 1000)}
        if proc is not None:
            end = flood_counts(proc, "during the measured window")
            result["flooder"] = check_flood_rate(start, end, result["polite"]["requests"])
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        d.stop()
        daemons.remove(d)
    log(f"{tag}: polite {result['polite']}" + (f"; flooder {result['flooder']}" if flood else ""))
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from edged.repository.pack import pack
    from edged.runtime.backends import select_backend
    from edged.testing.tflite_build import mobilenet_class_model

    backend = select_backend(args.runtime)
    result: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, "scripts/bench_fairness.py",
                                                   *sys.argv[1:]]),
                              "machine": machine_facts(backend.describe()), "inflight": args.inflight,
                              "interval_ms": args.interval_ms, "scenarios": {}}
    env = bench_env()
    with scratch("edged-fair-", False) as (workdir, daemons):
        src = workdir / "bench.tflite"
        src.write_bytes(mobilenet_class_model(seed=0))
        golden = workdir / "golden.npy"
        np.save(golden, bench_input())
        repo = workdir / "models"
        pack(src, name="bench", version="v1", repo=repo, golden_inputs=[golden], runtime=args.runtime)
        result["scenarios"]["alone"] = scenario(workdir, daemons, repo, env, args, "alone", None, False)
        for share in args.shares.split(","):
            result["scenarios"][f"flood_share_{share}"] = scenario(workdir, daemons, repo, env, args,
                                                                   f"flood{share}", share, True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("role_args", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="150 polite requests per scenario instead of 1000")
    p.add_argument("--shares", default="0,16", help="server.max_queued_per_client per flood run (none = unset)")
    p.add_argument("--inflight", type=int, default=200, help="predicts the flooder keeps outstanding")
    p.add_argument("--interval-ms", type=float, default=20.0, help="the polite client's period")
    p.add_argument("--runtime", default=os.environ.get("EDGED_RUNTIME", "auto"))
    p.add_argument("--out", help="also write the result as JSON here")
    args = p.parse_args(argv)
    if args.role == "flood":
        return role_flood(json.loads(args.role_args))
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
