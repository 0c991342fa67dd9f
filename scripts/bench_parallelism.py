#!/usr/bin/env python3
"""Side-by-side comparison of parallelism settings (docs/benchmarks.md, "Parallelism by load").

Starts one daemon per setting on the same MobileNet-class model plus the floor
server (scripts/bench.py's ``floor`` role), then, in rounds, measures sequential
latency (concurrency 1) of every one and throughput at concurrency 1, 2 and 4
(client processes) of every daemon, interleaved, so each setting sees the same
patch of a shared, noisy box.  Prints pooled figures and per-round ratios.

``--tree NAME=PATH`` adds a daemon with the default settings run from another checkout
(an A/B of source trees: ``--only by-load --tree base=../edged-old`` compares this tree
with that one).

Usage::

    python scripts/bench_parallelism.py [--rounds 3] [--n 300] [--window 5] [--only NAME ...] [--tree NAME=PATH ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench  # noqa: E402  (scripts/bench.py)

#: name -> (edged.toml text, description)
SETTINGS: dict[str, tuple[str, str]] = {
    "fixed-2x1": ("[server]\nworkers = 2\n[runtime]\nsolo_threads = 1\n", "2 workers × 1 thread (the old default)"),
    "hand-1x2": ("[server]\nworkers = 1\n[runtime]\nnum_threads = 2\nsolo_threads = 1\n",
                 "1 worker × 2 threads (the issue's hand tuning)"),
    "by-load": ("", "defaults: 2 workers × 1 thread + solo interpreter with 2 threads"),
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=300, help="turns per round (one request down every path each)")
    p.add_argument("--window", type=float, default=5.0, help="throughput window, seconds")
    p.add_argument("--runtime", default="auto")
    p.add_argument("--only", nargs="*", help="settings to run (default: all)")
    p.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                   help="also run a default-settings daemon from the checkout at PATH (repeatable)")
    args = p.parse_args()
    trees: dict[str, Path] = {}
    for spec in args.tree:
        name, _, path = spec.partition("=")
        # Resolved: each daemon runs in its own directory, where a relative path means nothing.
        root = Path(path).resolve()
        if not name or name in SETTINGS or name in trees or not (root / "edged" / "__init__.py").is_file():
            p.error(f"--tree {spec!r}: want a new NAME=PATH, PATH a checkout with edged/__init__.py")
        trees[name] = root
    from edged.repository.pack import pack
    from edged.testing.tflite_build import mobilenet_class_model

    env = bench.bench_env()
    settings = {k: v for k, v in SETTINGS.items() if not args.only or k in args.only}
    settings |= {name: ("", f"default settings, code from {root}") for name, root in trees.items()}
    out: dict = {"load_start": os.getloadavg(), "settings": {k: v[1] for k, v in settings.items()}}
    with bench.scratch("edged-par-", False) as (workdir, daemons):
        src = workdir / "m.tflite"
        src.write_bytes(mobilenet_class_model(seed=0))
        golden = workdir / "g.npy"
        import numpy as np

        np.save(golden, bench.bench_input())
        repo = workdir / "models"
        vdir = pack(src, name="bench", version="v1", repo=repo, golden_inputs=[golden], runtime=args.runtime)
        eps = {}
        for name, (toml, _) in settings.items():
            # The daemons run side by side: each needs its own runtime directory and repository.
            sub = bench.private_copy(repo, workdir / name)
            (sub / "edged.toml").write_text(toml)
            ep = f"ipc://{sub}/p.sock"
            denv = {**env, "PYTHONPATH": str(trees[name])} if name in trees else env
            if name in trees:  # the A/B is void if the daemon imports some other checkout
                where = subprocess.run([sys.executable, "-c", "import edged; print(edged.__file__)"], env=denv,
                                       cwd=sub, capture_output=True, text=True, check=True).stdout.strip()
                if not Path(where).resolve().is_relative_to(trees[name]):
                    raise SystemExit(f"--tree {name}: the daemon would import {where}, not the tree's code")
            bench.start_daemon(daemons, sub / "models", ep, f"ipc://{sub}/c.sock", sub, args.runtime, None, denv, name)
            eps[name] = ep
        floor_ep = f"ipc://{workdir}/floor.sock"
        with bench.floor_servers([floor_ep], 2, vdir / "model.tflite", args.runtime, env):
            lat = bench.latency_rounds({}, {"floor": floor_ep, **eps}, args.rounds, args.n)
        out["latency"] = {k: {"p50": v["client"]["p50_ms"], "p99": v["client"]["p99_ms"],
                              "round_p50": v["round_p50_ms"], "threads": v.get("threads")}
                          for k, v in lat.items() if isinstance(v, dict) and "client" in v}
        tput: dict[str, dict[int, list[float]]] = {k: {1: [], 2: [], 4: []} for k in eps}
        for _ in range(args.rounds):
            for c in (1, 2, 4):
                for name, ep in eps.items():
                    tput[name][c].append(bench.throughput(ep, env, c, args.window)["rps"])
        out["throughput"] = tput
        out["load_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    f = out["latency"]["floor"]
    print(f"\nload avg start {out['load_start'][0]:.1f}, end {out['load_end'][0]:.1f}")
    print(f"{'setting':12} {'p50':>7} {'p99':>7} {'p50/floor':>10} {'p99/floor':>10}  c=1 / c=2 / c=4 req/s (median)")
    print(f"{'floor':12} {f['p50']:7.3f} {f['p99']:7.3f}")
    for name in eps:
        x = out["latency"][name]
        med = [float(np.median(tput[name][c])) for c in (1, 2, 4)]
        print(f"{name:12} {x['p50']:7.3f} {x['p99']:7.3f} {x['p50'] / f['p50']:10.2f} {x['p99'] / f['p99']:10.2f}  "
              + " / ".join(f"{v:.0f}" for v in med) + f"   threads {x['threads']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
