#!/usr/bin/env python3
"""The power governor under sustained overload: CPU, served/refused rates and duty cycle per profile.

One ``edged serve`` (2 workers, LiteRT, the MobileNet-class model of
``scripts/bench.py``: ≈5 ms per invoke with 1 thread) runs with
``power.source = "file"`` pointing at a JSON that never changes, so sensors
cannot move the profile; each profile is forced with the control op
``{"op": "power", "profile": P}``.  For every profile two passes run, each a
fixed window of offered load far above what the profile allows:

* ``normal`` - priority ``normal``: the token bucket (``max_rps``), the queue
  limit, the concurrency bound and the duty cycle all apply;
* ``high`` - priority ``high``: bypasses the token bucket (and gets the
  server's queue bound), but not the duty cycle or the concurrency bound, so
  in the limited profiles the duty cap is what binds.

The load: ``--clients`` processes (default 4), each with one DEALER socket,
offering ``--rate`` requests/s (default 100, so 400/s in all, more than
two cores can compute) with at most ``--inflight`` (default 8) requests
outstanding; a refusal does not make a client send faster or slower (no
back-off on ``retry_after_ms``), so the offered load is the same for every
profile.  Per pass it reports:

1. the daemon's CPU seconds per wall second (psutil user+system delta);
2. served/s (ok replies) and refused/s (``THROTTLED`` replies) received in the
   window, cross-checked against the ``stats`` op counters (``requests``,
   ``throttled`` + ``shed``) and the governor's own counters;
3. the measured duty: Σ ``timing.invoke_us`` of the replies served in the
   window / (window × ``max_active``), against the profile's ``duty_cycle``,
   and whether it is within ±10 % of it.  Which limit binds is computed
   from the profile and the mean invoke time: the rate limit binds when
   ``max_rps × mean invoke < duty × max_active``; with a duty cap of 1.0
   nothing but the CPU binds.

Usage::

    python scripts/bench_power.py [--quick] [--seconds S] [--out FILE.json]

Every loop is bounded in count and time; all traffic is ``ipc://`` under a
temporary directory.  ``--role overload`` is this script run as a client
subprocess by itself.  Helpers for the model, the input and the daemon come
from ``scripts/bench.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # scripts/bench.py; importing it also puts the checkout on sys.path
from bench import INPUT_SHAPE, DaemonRun, bench_env, bench_input, log, machine_facts, scratch, start_daemon

PROFILES = ("performance", "balanced", "powersave", "critical")
PASSES = ("normal", "high")
WITHIN = 0.10  # ±10 % of the duty cap


# ---------------------------------------------------------------------------------------------
# The client role (a subprocess)
# ---------------------------------------------------------------------------------------------

def role_overload(args: dict[str, Any]) -> int:
    """Offer ``rate`` predicts/s with at most ``inflight`` outstanding from ``warm_at`` to ``stop_at``.

    Prints one JSON object: per reply ``[t_recv, ok, code, invoke_us]`` (monotonic,
    system-wide on Linux, so the parent can cut its window), plus sent/lost counts.
    Replies still missing ``drain_s`` after the last send are counted as ``lost``.
    """
    import zmq

    x = bench_input()
    payload = memoryview(x).cast("B")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args["endpoint"])
    rate, cap = float(args["rate"]), int(args["inflight"])
    warm_at, stop_at = float(args["warm_at"]), float(args["stop_at"])
    prefix = f"{os.getpid():x}-"
    meta = [{"dtype": "uint8", "shape": list(INPUT_SHAPE)}]
    outstanding: set[str] = set()
    rows: list[list[Any]] = []
    sent = 0
    while time.monotonic() < warm_at:
        time.sleep(min(0.01, max(0.0, warm_at - time.monotonic())))
    next_send = time.monotonic()

    def receive(timeout_ms: float) -> None:
        if not sock.poll(max(0, int(timeout_ms))):
            return
        for _ in range(10_000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            t = time.monotonic()
            head = json.loads(bytes(frames[0].buffer))
            outstanding.discard(head.get("id"))
            if head.get("ok"):
                rows.append([t, 1, None, head["timing"]["invoke_us"]])
            else:
                rows.append([t, 0, (head.get("error") or {}).get("code"), 0])

    for _ in range(10_000_000):
        now = time.monotonic()
        if now >= stop_at:
            break
        # Never build a burst to "catch up" after the in-flight cap held sends back.
        next_send = max(next_send, now - 1.0 / rate)
        while len(outstanding) < cap and now >= next_send:
            rid = f"{prefix}{sent}"
            header = {"v": 1, "id": rid, "op": "predict", "inputs": meta, "priority": args["priority"]}
            sock.send_multipart([json.dumps(header, separators=(",", ":")).encode(), payload], copy=False)
            outstanding.add(rid)
            sent += 1
            next_send += 1.0 / rate
        wait = 50.0 if len(outstanding) >= cap else (next_send - time.monotonic()) * 1000
        receive(min(50.0, max(0.0, wait)))
    drain_until = time.monotonic() + float(args["drain_s"])
    while outstanding and time.monotonic() < drain_until:
        receive(50)
    sock.close(0)
    ctx.term()
    print(json.dumps({"sent": sent, "lost": len(outstanding), "rows": rows}))
    return 0


ROLES = {"overload": role_overload}


def spawn_role(role: str, args: dict[str, Any], env: dict[str, str]) -> subprocess.Popen:
    """This script run as ``--role role`` (bench.spawn_role), its stdout piped."""
    return bench.spawn_role(role, args, env, script=Path(__file__).resolve(), stdout=subprocess.PIPE)


# ---------------------------------------------------------------------------------------------
# One pass
# ---------------------------------------------------------------------------------------------

def control(endpoint: str, op: str, **fields: Any) -> dict[str, Any]:
    from edged.client import Client

    with Client.control(endpoint, timeout=10.0) as c:
        head, _ = c.call(op, **fields)
    return head


def model_stats(endpoint: str) -> dict[str, Any]:
    m = control(endpoint, "stats")["stats"]["models"][0]
    return {"requests": m["requests"], "throttled": m["throttled"], "shed": m["shed"],
            "errors": sum(m.get("errors", {}).values())}


def run_pass(d: DaemonRun, env: dict[str, str], profile: str, priority: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Force ``profile``, offer overload at ``priority`` for ``opts.seconds``; every figure of one row."""
    import psutil

    power = control(d.control, "power", profile=profile)
    assert power["profile"] == profile, power
    gov, limits = power["governor"], power["limits"]
    warm_at = time.monotonic() + 2.0  # room for the clients' imports
    start_at = warm_at + opts.warmup
    end_at = start_at + opts.seconds
    procs = [spawn_role("overload", {"endpoint": d.endpoint, "rate": opts.rate, "inflight": opts.inflight,
                                     "priority": priority, "warm_at": warm_at, "stop_at": end_at,
                                     "drain_s": 30.0}, env) for _ in range(opts.clients)]
    proc = psutil.Process(d.proc.pid)
    try:
        time.sleep(max(0.0, start_at - time.monotonic()))
        c0, s0, g0, t0 = proc.cpu_times(), model_stats(d.control), control(d.control, "power")["governor"], \
            time.monotonic()
        time.sleep(max(0.0, end_at - time.monotonic()))
        c1, s1, g1, t1 = proc.cpu_times(), model_stats(d.control), control(d.control, "power")["governor"], \
            time.monotonic()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=opts.seconds + opts.warmup + 60)
            if p.returncode != 0:
                raise RuntimeError(f"client process failed with {p.returncode}")
            results.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    wall = t1 - t0
    rows = [r for res in results for r in res["rows"] if t0 <= r[0] < t1]
    served = [r for r in rows if r[1]]
    codes: dict[str, int] = {}
    for r in rows:
        if not r[1]:
            codes[r[2]] = codes.get(r[2], 0) + 1
    refused = codes.get("THROTTLED", 0)
    invoke_s = sum(r[3] for r in served) / 1e6
    max_active = gov["max_active"]
    cap = float(limits["duty_cycle"])
    duty = invoke_s / (wall * max_active)
    mean_invoke = invoke_s / len(served) if served else None
    rps = limits.get("max_rps")
    rps = None if rps in (None, "unlimited") else float(rps)
    if cap >= 1.0:
        binding = "cpu"  # a cap of 1.0 never makes a worker wait
    elif priority == "normal" and rps is not None and mean_invoke is not None and rps * mean_invoke < cap * max_active:
        binding = "rate"
    else:
        binding = "duty"
    dstats = {k: s1[k] - s0[k] for k in s0}
    dgov = {k: g1[k] - g0[k] for k in ("admitted", "throttled", "shed")}
    return {
        "profile": profile, "pass": priority, "wall_s": round(wall, 3),
        "limits": limits, "max_active": max_active, "duty_cap": cap, "binding": binding,
        "cpu_s_per_s": round(((c1.user - c0.user) + (c1.system - c0.system)) / wall, 3),
        "offered_per_s": round(sum(res["sent"] for res in results) / (end_at - warm_at), 1),
        "served_per_s": round(len(served) / wall, 2),
        "refused_per_s": round(refused / wall, 2),
        "other_errors": {k: v for k, v in codes.items() if k != "THROTTLED"},
        "lost": sum(res["lost"] for res in results),
        "stats_per_s": {"requests": round(dstats["requests"] / wall, 2),
                        "throttled": round(dstats["throttled"] / wall, 2),
                        "shed": round(dstats["shed"] / wall, 2), "errors": round(dstats["errors"] / wall, 2)},
        "governor_per_s": {k: round(v / wall, 2) for k, v in dgov.items()},
        "mean_invoke_ms": round(mean_invoke * 1000, 3) if mean_invoke is not None else None,
        "duty_measured": round(duty, 4),
        # Σ invoke over every worker thread: what the governor's per-worker pacing actually bounds.
        "duty_per_worker_thread": round(invoke_s / (wall * opts.workers), 4),
        "cpu_ms_per_reply": round(1000 * ((c1.user - c0.user) + (c1.system - c0.system)) / max(1, len(rows)), 3),
        "duty_ratio": round(duty / cap, 3),
        "within_10pct": abs(duty / cap - 1.0) <= WITHIN,
        "rate_bound_per_s": rps,
        "duty_bound_per_s": round(cap * max_active / mean_invoke, 1) if mean_invoke else None,
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def verdict(r: dict[str, Any]) -> str:
    ok = "yes" if r["within_10pct"] else "NO"
    return ok if r["binding"] == "duty" else f"{ok} ({r['binding']} binds)"


def print_report(result: dict[str, Any]) -> None:
    head = (f"{'profile':12} {'pass':7} {'offered/s':>9} {'CPU s/s':>8} {'served/s':>9} {'refused/s':>10} "
            f"{'stats req/thr/shed /s':23} {'invoke ms':>9} {'duty':>6} {'cap':>5} {'ratio':>6} {'/thread':>7}  "
            "within ±10%?")
    lines = ["", f"edged power governor under overload — {result['machine']['nproc']} CPUs, {result['runtime']}, "
             f"workers {result['workers']}, offered {result['clients']}×{result['rate']:g}/s, "
             f"≤{result['inflight']} in flight each, {result['seconds']:g} s windows"
             + ("  [--quick]" if result["quick"] else ""), "", head]
    for r in result["rows"]:
        st = r["stats_per_s"]
        cross = f"{st['requests']:.1f}/{st['throttled']:.1f}/{st['shed']:.1f}"
        lines.append(f"{r['profile']:12} {r['pass']:7} {r['offered_per_s']:9.1f} {r['cpu_s_per_s']:8.3f} "
                     f"{r['served_per_s']:9.1f} {r['refused_per_s']:10.1f} {cross:23} {r['mean_invoke_ms'] or 0:9.2f} "
                     f"{r['duty_measured']:6.3f} {r['duty_cap']:5.2f} {r['duty_ratio']:6.2f} "
                     f"{r['duty_per_worker_thread']:7.3f}  {verdict(r)}")
    for r in result["rows"]:
        if r["other_errors"] or r["lost"]:
            lines.append(f"  {r['profile']}/{r['pass']}: other errors {r['other_errors']}, lost {r['lost']}")
    print("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def run(opts: argparse.Namespace) -> dict[str, Any]:
    from edged.repository.pack import pack
    from edged.runtime.backends import select_backend
    from edged.testing.tflite_build import mobilenet_class_model

    backend = select_backend("auto")
    result: dict[str, Any] = {
        "quick": opts.quick, "seconds": opts.seconds, "warmup_s": opts.warmup, "clients": opts.clients,
        "rate": opts.rate, "inflight": opts.inflight, "workers": opts.workers, "runtime": backend.describe(),
        "command": " ".join([Path(sys.executable).name, "scripts/bench_power.py", *sys.argv[1:]]),
        "machine": machine_facts(backend.describe()), "rows": [],
    }
    env = bench_env()
    with scratch("edged-bpow-", opts.keep) as (workdir, daemons):
        log(f"building the MobileNet-class model in {workdir}")
        src = workdir / "bench-v1.tflite"
        src.write_bytes(mobilenet_class_model(seed=0))
        golden = workdir / "golden.npy"
        import numpy as np

        np.save(golden, bench_input())
        repo = workdir / "models"
        pack(src, name="bench", version="v1", repo=repo, golden_inputs=[golden], runtime="auto",
             created_by={"command": "scripts/bench_power.py", "seed": 0})
        # A reading no shipped rule turns into anything but performance; the override decides.
        sensors = workdir / "power.json"
        sensors.write_text(json.dumps({"battery_percent": 100, "on_ac": True, "temperature_c": 40.0}))
        # DaemonRun reads <workdir>/edged.toml.
        (workdir / "edged.toml").write_text(
            f"[server]\nworkers = {opts.workers}\n\n[power]\nsource = \"file\"\nfile = \"{sensors}\"\n")
        d = start_daemon(daemons, repo, f"ipc://{workdir}/p.sock", f"ipc://{workdir}/c.sock", workdir, "auto",
                         opts.workers, env, "power")
        for profile in PROFILES:
            for priority in PASSES:
                log(f"{profile}, {priority} priority: {opts.warmup:g} s warm-up + {opts.seconds:g} s window")
                row = run_pass(d, env, profile, priority, opts)
                log(f"  served {row['served_per_s']}/s, refused {row['refused_per_s']}/s, "
                    f"CPU {row['cpu_s_per_s']} s/s, duty {row['duty_measured']} (cap {row['duty_cap']})")
                result["rows"].append(row)
        control(d.control, "power", auto=True)
        result["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="edged power governor under sustained overload, per profile")
    p.add_argument("--quick", action="store_true", help="4 s windows (not for the record)")
    p.add_argument("--seconds", type=float, help="measurement window per pass (default 15, --quick 4)")
    p.add_argument("--warmup", type=float, default=1.5, help="load before each window opens (default 1.5 s)")
    p.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--rate", type=float, default=100.0, help="requests/s offered by each client (default 100)")
    p.add_argument("--inflight", type=int, default=8, help="most requests outstanding per client (default 8)")
    p.add_argument("--workers", type=int, default=2, help="daemon workers (default 2)")
    p.add_argument("--out", type=Path, help="also write every figure as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (daemon log)")
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("role_args", nargs="?", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.role:
        return ROLES[opts.role](json.loads(opts.role_args))
    if opts.seconds is None:
        opts.seconds = 4.0 if opts.quick else 15.0
    result = run(opts)
    print_report(result)
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
