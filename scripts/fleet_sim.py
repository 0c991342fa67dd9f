#!/usr/bin/env python3
"""Fleet-scale simulation of remote updates: what N devices do to the registry's server.

N simulated devices (default 2,000) run in this one process as lightweight tasks,
not daemons.  Each has its own repository directory and TUF metadata cache and
runs the real update client (:class:`edged.update.client.UpdateClient`: ngclient
refresh, the signed index, the rollout bucket, downloads, atomic install) and
the real strategies (:mod:`edged.update.strategy`: periodic jitter, adaptive
intervals) against one registry made by ``edged registry`` and served by Debian's
nginx on loopback (the e2e tests' generated config).

The clock is compressed: a discrete-event loop on simulated time (a heap of
"device d checks at t"); every check really happens over HTTP, at whatever pace
the machine allows, and its requests are booked at its simulated time.  A
"serving" device is one whose repository holds the version (validation and
swap are the daemon's and are not simulated).

Scenarios (every device boots at t = 0 with a warm TUF cache, ``interval_s`` = 3600 s):

1. **idle, no jitter** and **idle, jitter 0.1** – ``--hours`` simulated hours with
   nothing new: requests/s at the server (peak over 1-s bins, mean), bytes per
   idle device per day (nginx ``$bytes_sent`` + ``$request_length``), share of
   checks that fetch only timestamp metadata.
2. **rollout** (jitter 0.1) – v2 published at 10 % after 10 minutes, raised to
   100 % after 2 h: time until 95 % of the covered devices serve it, each time.
3. **bad version on 10 %** – v2 (at 100 %) is fetched by every device on its first
   check, and then looks unhealthy (as the daemon's health book says past a
   ``[health]`` threshold) on the devices whose bucket of ("bad", device) is
   below 10, healthy elsewhere; periodic
   versus adaptive (``min_interval_s`` 300, ``max_interval_s`` 86400): mean and
   peak requests/s and checks per device per hour, split healthy/unhealthy.

Output: a table on stdout, ``--out FILE.json`` with every figure, and
``--plot FILE.png`` (requests/s over simulated time, with and without jitter).

Usage::

    python scripts/fleet_sim.py [--devices 2000] [--hours 3] [--out sim.json] [--plot docs/fleet_sim.png]
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_update import edged  # noqa: E402  (scripts/bench_update.py)
from edged.config import UpdateConfig  # noqa: E402
from edged.repository import layout  # noqa: E402
from edged.seams import FakeClock  # noqa: E402
from edged.testing import tflite_build as tb  # noqa: E402
from edged.update.client import UpdateClient  # noqa: E402
from edged.update.decide import LocalModel  # noqa: E402
from edged.update.fetch import ResumableFetcher  # noqa: E402
from edged.update.rollout import bucket  # noqa: E402
from edged.update.strategy import Context, Health, make_strategy  # noqa: E402
from tests.e2e.nginx import Nginx  # noqa: E402
from tests.e2e.repohelpers import publish  # noqa: E402

INTERVAL_S = 3600.0
BAD_HOURS = 4


@dataclass
class Device:
    id: str
    repo: Path
    client: UpdateClient
    strategy: Any
    health: Health = field(default_factory=Health)
    served_at: dict[str, float] = field(default_factory=dict)

    def local(self) -> LocalModel:
        present = layout.version_names(self.repo / "m")
        top = present[-1] if present else None
        return LocalModel(name="m", serving=top, committed=top, present=present)


@dataclass
class Run:
    """What one scenario booked: requests per simulated second, checks, installs."""

    name: str
    duration_s: float
    per_second: Counter = field(default_factory=Counter)
    checks: int = 0
    timestamp_only: int = 0
    requests: int = 0
    log_from: int = 0
    log_to: int = 0
    checks_by_group: Counter = field(default_factory=Counter)

    def figures(self, devices: int) -> dict[str, Any]:
        return {"scenario": self.name, "simulated_hours": self.duration_s / 3600, "checks": self.checks,
                "requests": self.requests, "peak_rps": max(self.per_second.values(), default=0),
                "mean_rps": round(self.requests / self.duration_s, 3),
                "timestamp_only_share": round(self.timestamp_only / max(1, self.checks), 4),
                "checks_per_device_hour": round(self.checks / devices / (self.duration_s / 3600), 3)}


class Fleet:
    def __init__(self, tmp: Path, server: Nginx, n: int, seed: int) -> None:
        self.tmp, self.server, self.n = tmp, server, n
        self.fetcher = ResumableFetcher(timeout_s=30, retries=3)
        self.clock = FakeClock(start=0.0)
        self.rng = random.Random(seed)
        self.seed_repo = tmp / "seed"
        publish(self.seed_repo, "v1", tb.random_classifier(seed=1), tmp=tmp)
        self.warm = False

    def warm_up(self, cfg: UpdateConfig) -> None:
        """One real check on the seed repository, copied into every device: the fleet has been
        running for a while (its TUF cache is warm), so every simulated check is a steady-state one."""
        client = UpdateClient(cfg, self.seed_repo, device_id="warm-up", fetcher=self.fetcher, emit=lambda e: None)
        result = client.check([LocalModel(name="m", serving="v1", committed="v1", present=["v1"])], reason="boot",
                              may_download=lambda d: (False, "warm-up"), apply=lambda d: None,
                              runtime_ok=lambda need: True)
        if not result.ok:
            raise SystemExit(f"warm-up check refused: {result.refused}")
        self.warm = True

    def devices(self, name: str, cfg: UpdateConfig) -> list[Device]:
        out = []
        base = self.tmp / name
        for i in range(self.n):
            repo = base / f"d{i}"
            if not self.warm:
                self.warm_up(cfg)
            shutil.copytree(self.seed_repo, repo, symlinks=True)
            dev_id = f"sim-{i:06d}"
            client = UpdateClient(cfg, repo, device_id=dev_id, fetcher=self.fetcher, emit=lambda e: None,
                                  clock=self.clock)
            dev = Device(dev_id, repo, client, None)
            health = (lambda d=dev: d.health)
            dev.strategy = make_strategy(cfg, Context(health=health, rng=random.Random(self.rng.random())))
            out.append(dev)
        return out

    def run(self, name: str, devices: list[Device], duration_s: float,
            actions: list[tuple[float, Any]] = (), health: Any = None) -> Run:
        """Discrete events on simulated time: each device checks when its strategy says."""
        run = Run(name, duration_s, log_from=len(self.server.requests()))
        heap: list[tuple[float, int, int]] = []  # (sim time, order, device index)
        order = 0
        for i, d in enumerate(devices):
            delay, _ = d.strategy.next_check(0.0, None)
            heapq.heappush(heap, (delay, order, i))
            order += 1
        pending = sorted(actions, key=lambda a: a[0])
        t0 = time.monotonic()
        while heap and heap[0][0] < duration_s:
            t, _, i = heapq.heappop(heap)
            while pending and pending[0][0] <= t:
                pending.pop(0)[1]()
            d = devices[i]
            self.clock.advance(t - self.clock.monotonic())
            if health is not None:
                d.health = health(d)
            req0 = self.fetcher.requests
            result = d.client.check([d.local()], reason="schedule", may_download=d.strategy.may_download,
                                    apply=lambda decision: None, runtime_ok=lambda need: True, hold=d.strategy.hold)
            n = self.fetcher.requests - req0
            run.per_second[int(t)] += n
            run.requests += n
            run.checks += 1
            run.checks_by_group["unhealthy" if d.health.reasons else "healthy"] += 1
            run.timestamp_only += n <= 2 and result.ok
            for item in result.installed:
                d.served_at.setdefault(item.split("/")[1], t)
            if health is not None:
                d.health = health(d)  # as the daemon would judge the version it serves now
            delay, _ = d.strategy.next_check(t, result)
            heapq.heappush(heap, (t + delay, order, i))
            order += 1
        while pending:
            pending.pop(0)[1]()
        run.log_to = len(self.server.requests())
        print(f"  {name}: {run.checks} checks, {run.requests} requests in {time.monotonic() - t0:.0f} s real",
              file=sys.stderr)
        return run

    def wire_bytes(self, run: Run) -> tuple[int, int]:
        lines = self.server.requests()[run.log_from:run.log_to]
        return sum(int(r["sent"]) for r in lines), sum(int(r["received"]) for r in lines)


def time_to_share(covered: list[Device], version: str, since: float, share: float) -> Any:
    times = sorted(d.served_at[version] - since for d in covered if version in d.served_at)
    need = int(share * len(covered) + 0.999)
    return round(times[need - 1], 1) if len(times) >= need and need > 0 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--hours", type=float, default=3.0, help="simulated hours of each idle scenario")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--scenarios", default="idle,rollout,bad", help="comma-separated subset of idle,rollout,bad")
    args = ap.parse_args()
    if "idle" in args.scenarios.split(",") and args.hours * 3600 <= INTERVAL_S:
        ap.error(f"--hours must be more than {INTERVAL_S / 3600:g}: the idle devices check once per hour")
    scenarios = set(args.scenarios.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="edged-fleet-sim-", dir="/tmp"))
    reg, keys = tmp / "reg", tmp / "keys"
    edged("registry", "init", str(reg), "--keys", str(keys))
    src = publish(tmp / "src", "v2", tb.random_classifier(seed=2), tmp=tmp)
    (tmp / "nginx").mkdir()
    server = Nginx(reg, tmp / "nginx")
    base = dict(url=server.url, root=str(reg / "metadata" / "1.root.json"), interval_s=INTERVAL_S)
    fleet = Fleet(tmp, server, args.devices, args.seed)
    n = args.devices
    out: dict[str, Any] = {"devices": n, "interval_s": INTERVAL_S}
    try:
        # 1. idle, with and without jitter
        idle = {}
        for jitter in ((0.0, 0.1) if "idle" in scenarios else ()):
            name = f"idle, jitter {jitter:g}"
            devs = fleet.devices(f"idle{jitter}", UpdateConfig(strategy="periodic", jitter=jitter, **base))
            run = fleet.run(name, devs, args.hours * 3600)
            fig = run.figures(n)
            sent, received = fleet.wire_bytes(run)
            fig["bytes_per_check_wire"] = round((sent + received) / max(1, run.checks))
            fig["bytes_per_idle_device_day"] = round((sent + received) / max(1, run.checks) * (86400 / INTERVAL_S))
            idle[jitter] = run
            out[name] = fig
            print(f"{name}: peak {fig['peak_rps']} req/s, mean {fig['mean_rps']} req/s, timestamp-only "
                  f"{100 * fig['timestamp_only_share']:.1f} % of checks, {fig['bytes_per_check_wire']} B per check, "
                  f"{fig['bytes_per_idle_device_day']} B per device per day (hourly)")
            shutil.rmtree(tmp / f"idle{jitter}", ignore_errors=True)

        # 2. staged rollout: 10 % at 10 min, 100 % at 2 h
        if "rollout" not in scenarios:  # scenario 3 needs v2 published at 100 %
            edged("registry", "publish", str(src), "--registry", str(reg), "--keys", str(keys))
        else:
            devs = fleet.devices("rollout", UpdateConfig(strategy="periodic", jitter=0.1, **base))
            published_at = {"10": 600.0, "100": 2 * 3600.0}
            actions = [
                (published_at["10"], lambda: edged("registry", "publish", str(src), "--registry", str(reg), "--keys",
                                                   str(keys), "--rollout", "10")),
                (published_at["100"], lambda: edged("registry", "rollout", "m", "v2", "100", "--registry", str(reg),
                                                    "--keys", str(keys))),
            ]
            run = fleet.run("rollout", devs, 4 * 3600, actions)
            first = [d for d in devs if bucket(d.id, "m", "v2") < 10]
            in_first = sum(1 for d in first if "v2" in d.served_at and d.served_at["v2"] < published_at["100"])
            fig = run.figures(n)
            fig.update({"covered_at_10": len(first), "served_within_10_phase": in_first,
                        "t95_after_10_s": time_to_share(first, "v2", published_at["10"], 0.95),
                        "t95_after_100_s": time_to_share(devs, "v2", published_at["100"], 0.95),
                        "served_at_end": sum(1 for d in devs if "v2" in d.served_at)})
            sent, received = fleet.wire_bytes(run)
            fig["egress_bytes"] = sent
            out["rollout"] = fig
            print(f"rollout: 10 % covers {len(first)} devices, 95 % of them serve v2 {fig['t95_after_10_s']} s after "
                  f"publish; at 100 %, 95 % of all serve it {fig['t95_after_100_s']} s after the raise; "
                  f"egress {sent / 1e6:.1f} MB")
            shutil.rmtree(tmp / "rollout", ignore_errors=True)

        # 3. v2 is bad on 10 % of devices: periodic versus adaptive
        def health(d: Device) -> Health:
            if bucket(d.id, "bad", "v2") < 10 and "v2" in d.local().present:
                return Health(reasons=["m/v2: error rate 20.0% over 5.0%"], evidence=True)
            return Health(evidence=True)

        for strategy in (("periodic", "adaptive") if "bad" in scenarios else ()):
            cfg = UpdateConfig(strategy=strategy, jitter=0.1, min_interval_s=300, max_interval_s=86400, **base)
            devs = fleet.devices(f"bad-{strategy}", cfg)
            run = fleet.run(f"bad on 10 %, {strategy}", devs, BAD_HOURS * 3600, health=health)
            fig = run.figures(n)
            unhealthy = sum(1 for d in devs if bucket(d.id, "bad", "v2") < 10)
            fig["checks_per_device_hour_unhealthy"] = round(
                run.checks_by_group["unhealthy"] / max(1, unhealthy) / BAD_HOURS, 3)
            fig["checks_per_device_hour_healthy"] = round(
                run.checks_by_group["healthy"] / max(1, n - unhealthy) / BAD_HOURS, 3)
            out[f"bad on 10 %, {strategy}"] = fig
            print(f"bad on 10 %, {strategy}: mean {fig['mean_rps']} req/s, peak {fig['peak_rps']}; checks per "
                  f"device-hour {fig['checks_per_device_hour_unhealthy']} unhealthy, "
                  f"{fig['checks_per_device_hour_healthy']} healthy")
            shutil.rmtree(tmp / f"bad-{strategy}", ignore_errors=True)
    finally:
        server.stop()
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    if args.plot and idle:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        seconds = int(args.hours * 3600)
        for jitter, run in sorted(idle.items()):
            # The busiest second of each minute: a mean per minute would hide a herd that lands in one second.
            peak = [max(run.per_second.get(s, 0) for s in range(m * 60, m * 60 + 60)) for m in range(seconds // 60)]
            ax.plot(range(seconds // 60), peak, label=f"jitter {jitter:g}" if jitter else "no jitter", lw=1.2)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xlabel("simulated time (minutes; every device boots at 0, checks hourly)")
        ax.set_ylabel("requests/s at the server\n(busiest second of each minute)")
        ax.set_title(f"{n} devices, idle checks against one registry")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
