#!/usr/bin/env python3
"""One-command benchmark of edged against its floors, with the issue's targets.

Builds the MobileNet-class int8 model (224×224×3 uint8 in, 1000 uint8 out;
:func:`edged.testing.tflite_build.mobilenet_class_model`) into a temporary
repository with :func:`edged.repository.pack.pack`, then measures in one run,
on the same model and the same input tensor:

1. in-process ``LoadedModel.run()`` (set_tensor + invoke + get_tensor) p50/p99,
   same runtime, delegate and ``num_threads`` as the daemon; and in-process
   best throughput with ``workers`` threads, each with its own interpreter;
2. a bare pyzmq ROUTER echo server (subprocess) over ipc: the transport floor;
3. ``edged serve`` over ipc and loopback TCP: sequential p50/p99 and
   throughput at concurrency 1, 2, 4 (one client *process* per concurrent
   request, so the client side has no GIL), beside the floor servers: one
   single-threaded server with the solo thread count (latency), and one
   1-thread server per worker with the clients spread over them (the served
   floor for throughput: what any server gets here with its clients on the
   same cores);
4. daemon RSS after load versus a bare process that imports numpy, pyzmq and
   the runtime and loads the same model into as many interpreters;
5. time from process start to the first ``health`` reply, and the daemon's own
   ``ready in N ms`` log figure;
6. idle CPU of the daemon (user+system) as % of one core;
7. a hot swap: ``pack`` v2 (other seed) while a client loops; time from the
   rename to the first v2 reply, validation time from the log, p99 during the
   swap versus steady state, peak RSS during the swap.

Usage::

    python scripts/bench.py [--quick] [--out FILE.json] [--runtime auto] [--workers 2]

Every loop is bounded in count and time; only ipc:// and 127.0.0.1 traffic.
Internal roles (``--role echo|floor|client|bare|swaploop``) are this script run as a
subprocess by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

INPUT_SHAPE = (1, 224, 224, 3)
INPUT_SEED = 42


def bench_input() -> np.ndarray:
    """The one input tensor every measurement uses (150528 bytes of uint8)."""
    return np.random.default_rng(INPUT_SEED).integers(0, 256, INPUT_SHAPE, dtype=np.uint8)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


def ms(seconds: list[float]) -> dict[str, Any]:
    """p50/p99/mean in milliseconds of a list of durations in seconds."""
    if not seconds:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None}
    return {"n": len(seconds), "p50_ms": round(pct(seconds, 50) * 1000, 4), "p99_ms": round(pct(seconds, 99) * 1000, 4),
            "mean_ms": round(float(np.mean(seconds)) * 1000, 4)}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Roles run as subprocesses of this script
# ---------------------------------------------------------------------------------------------

def router_requests(endpoint: str, max_s: float) -> Iterator[tuple[Any, list[Any]]]:
    """Bind a bare ROUTER, say ``ready`` on stdout, yield (socket, frames) per request until ``quit`` or ``max_s``."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    deadline = time.monotonic() + max_s
    print("ready", flush=True)
    try:
        while time.monotonic() < deadline:
            if not sock.poll(200):
                continue
            frames = sock.recv_multipart(copy=False)
            if len(frames) == 2 and frames[1].bytes == b"quit":
                break
            yield sock, frames
    finally:
        sock.close(0)
        ctx.term()


def role_echo(args: dict[str, Any]) -> int:
    """A bare ROUTER that echoes every message (``full``) or answers header + N bytes (``shaped``)."""
    small = b"\0" * int(args.get("reply_bytes", 1000))
    shaped = args.get("mode") == "shaped"
    spin_s = float(args.get("spin_s", 0.0))  # busy "compute" before replying, like a worker in invoke()
    for sock, frames in router_requests(args["endpoint"], float(args.get("max_s", 300))):
        if spin_s:
            until = time.perf_counter() + spin_s
            while time.perf_counter() < until:
                pass
        if shaped:
            sock.send_multipart([frames[0], frames[1], small], copy=False)
        else:
            sock.send_multipart(frames, copy=False)
    return 0


def warm_interpreter(backend: Any, plan: Any, content: bytes, threads: int) -> Any:
    """A bare interpreter of the model with ``threads`` threads, allocated and run once on zeros."""
    it = backend.interpreter_cls(model_content=content, num_threads=threads, **plan.interpreter_kwargs())
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
    return it


def role_floor(args: dict[str, Any]) -> int:
    """The machine's floor for a served request: one thread, no queue, no hand-off.

    A bare ROUTER that runs the same model: receive → ``json.loads`` → ``frombuffer``
    → set_tensor/invoke/get_tensor → send a daemon-shaped reply (JSON header + the
    output), so ``edged.client`` talks to it exactly as to edged.
    """
    from edged.runtime import delegates
    from edged.runtime.backends import select_backend

    backend = select_backend(args["runtime"])
    path = Path(args["model"])
    plan = delegates.plan(backend, "auto", path.parent, path)
    interp = warm_interpreter(backend, plan, path.read_bytes(), int(args["threads"]))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    shape, dtype = tuple(int(v) for v in inp["shape"]), np.dtype(inp["dtype"])
    for sock, frames in router_requests(args["endpoint"], float(args.get("max_s", 900))):
        head = json.loads(bytes(frames[1].buffer))
        interp.set_tensor(inp["index"], np.frombuffer(frames[2].buffer, dtype).reshape(shape))
        interp.invoke()
        y = interp.get_tensor(out["index"])
        reply = {"v": 1, "id": head.get("id"), "op": "predict", "ok": True,
                 "outputs": [{"dtype": y.dtype.name, "shape": list(y.shape)}]}
        sock.send_multipart([frames[0], json.dumps(reply, separators=(",", ":")).encode(), y], copy=False)
    return 0


@contextlib.contextmanager
def floor_servers(endpoints: Sequence[str], threads: int, model: Path, runtime: str,
                  env: dict[str, str]) -> Iterator[None]:
    """One floor server (``role_floor``) per endpoint, each with ``threads`` interpreter threads.

    Raises if one did not start, or exited before the block ended (its clients'
    timeouts would otherwise read as a slow floor); killed on exit.
    """
    procs = [spawn_role("floor", {"endpoint": ep, "model": str(model), "runtime": runtime, "threads": threads,
                                  "max_s": 3600}, env, stdout=subprocess.PIPE) for ep in endpoints]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != b"ready":
                raise RuntimeError("a floor server did not start")
        yield
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a floor server exited during the measurement")
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def role_client(args: dict[str, Any]) -> int:
    """Closed-loop predicts from ``start_at`` for ``duration_s`` (monotonic clock, system-wide on Linux)."""
    from edged.client import Client

    x = bench_input()
    start_at, end = float(args["start_at"]), float(args["start_at"]) + float(args["duration_s"])
    lat: list[float] = []
    errors = 0
    with Client(args["endpoint"], timeout=10.0) as c:
        for _ in range(3):  # connect and warm before the window opens
            c.predict(x)
        while time.monotonic() < start_at:
            time.sleep(min(0.01, max(0.0, start_at - time.monotonic())))
        for _ in range(1_000_000):
            t0 = time.monotonic()
            if t0 >= end:
                break
            try:
                c.predict(x)
            except Exception:  # counted, never hidden: the report shows errors per run
                errors += 1
                continue
            lat.append(time.monotonic() - t0)
    print(json.dumps({"n": len(lat), "errors": errors, "lat": lat}))
    return 0


def role_swaploop(args: dict[str, Any]) -> int:
    """Loop predicts, recording (send, receive, version), until ``tail_s`` after the first ``target`` reply."""
    from edged.client import Client

    x = bench_input()
    deadline = time.monotonic() + float(args["max_s"])
    first_target: float | None = None
    rows: list[tuple[float, float, str]] = []
    errors: list[tuple[float, str]] = []
    timing: list[dict[str, Any]] = []  # the daemon's split of each row's time
    with Client(args["endpoint"], timeout=10.0) as c:
        for _ in range(1_000_000):
            t0 = time.monotonic()
            if t0 >= deadline or (first_target is not None and t0 >= first_target + float(args["tail_s"])):
                break
            try:
                r = c.predict(x)
            except Exception as exc:  # reported, so a swap that drops requests shows up
                errors.append((t0, f"{type(exc).__name__}: {exc}"))
                continue
            t1 = time.monotonic()
            rows.append((t0, t1, r.version))
            timing.append(r.timing)
            if r.version == args["target"] and first_target is None:
                first_target = t1
    Path(args["out"]).write_text(json.dumps({"rows": rows, "timing": timing, "errors": errors}))
    return 0


def role_bare(args: dict[str, Any]) -> int:
    """Import numpy, pyzmq and the runtime, load the model into ``workers`` interpreters; report RSS."""
    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    import zmq  # noqa: F401

    from edged.runtime import delegates
    from edged.runtime.backends import select_backend

    backend = select_backend(args["runtime"])
    _ = backend.interpreter_cls  # import the runtime module itself
    imported = proc.memory_info().rss
    path = Path(args["model"])
    plan = delegates.plan(backend, "auto", path.parent, path)
    content = path.read_bytes()
    interps = [warm_interpreter(backend, plan, content, 1) for _ in range(int(args["workers"]))]
    time.sleep(0.2)
    pool = proc.memory_info().rss
    solo_threads = int(args.get("solo_threads", 0))
    if solo_threads > 1:  # the daemon's solo interpreter (one per model), as it builds it
        interps.append(warm_interpreter(backend, plan, content, solo_threads))
        time.sleep(0.2)
    loaded = proc.memory_info().rss
    print(json.dumps({"rss_start": base, "rss_imported": imported, "rss_pool": pool, "rss_loaded": loaded,
                      "delegate": plan.name}))
    return 0


ROLES = {"echo": role_echo, "floor": role_floor, "client": role_client, "swaploop": role_swaploop,
         "bare": role_bare}


def spawn_role(role: str, args: dict[str, Any], env: dict[str, str], script: Path | None = None,
               **kw: Any) -> subprocess.Popen:
    """``script`` (this one by default) run as ``--role role`` in a subprocess."""
    return subprocess.Popen([sys.executable, str(script or Path(__file__).resolve()), "--role", role,
                             json.dumps(args)], env=env, cwd=str(ROOT), **kw)


# ---------------------------------------------------------------------------------------------
# The daemon under test
# ---------------------------------------------------------------------------------------------

class DaemonRun:
    """``python -m edged serve`` on private endpoints; ``ready_s`` is Popen → first health reply."""

    def __init__(self, models: Path, endpoint: str, control: str, workdir: Path, runtime: str, workers: int | None,
                 env: dict[str, str], tag: str) -> None:
        self.endpoint, self.control = endpoint, control
        self.log_path = workdir / f"daemon-{tag}.log"
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "edged", "serve", "--models", str(models), "--endpoint", endpoint,
               "--control-endpoint", control, "--runtime", runtime, "--config", str(workdir / "edged.toml"),
               *(["--workers", str(workers)] if workers else [])]  # none: the daemon's default
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(workdir))
        self.ready_s: float | None = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> float:
        import zmq

        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 5)  # the default 100 ms would inflate the ready time
        sock.connect(self.endpoint)
        deadline = self.t0 + timeout
        try:
            for attempt in range(100_000):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"daemon not ready after {timeout}s:\n{self.log_text()}")
                sock.send_multipart([json.dumps({"v": 1, "id": attempt, "op": "health"}).encode()])
                # A request queued before the bind is delivered on connect; resend now and
                # then in case it went to a socket file of an earlier run.
                until = time.monotonic() + 0.5
                while time.monotonic() < until:
                    if sock.poll(20):
                        head = json.loads(sock.recv_multipart()[0])
                        if head.get("ok"):
                            self.ready_s = time.monotonic() - self.t0
                            return self.ready_s
                    if self.proc.poll() is not None:
                        break
        finally:
            sock.close(0)
        raise RuntimeError("unreachable")

    def logged_ms(self, pattern: str) -> list[float]:
        return [float(m) for m in re.findall(pattern, self.log_text())]

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def private_copy(repo: Path, directory: Path) -> Path:
    """``directory`` (mode 0700, a valid socket directory) holding a copy of ``repo`` as ``models``.

    For a daemon that runs beside another: edged refuses a second daemon on the same
    runtime directory or repository.
    """
    directory.mkdir(mode=0o700)
    shutil.copytree(repo, directory / "models", symlinks=True, ignore=shutil.ignore_patterns(".edged"))
    return directory


def start_daemon(daemons: list[DaemonRun], *args: Any) -> DaemonRun:
    """``DaemonRun(*args)``, registered in ``daemons`` (stopped on the way out), once it answers."""
    d = DaemonRun(*args)
    daemons.append(d)
    d.wait_ready()
    return d


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

def measure_inprocess(vdir: Path, runtime: str, workers: int, n: int, tput_s: float) -> dict[str, Any]:
    """The floor: the daemon's own LoadedModel, in this process, no transport."""
    from edged.runtime.backends import select_backend
    from edged.runtime.model import LoadedModel, LoadSpec

    backend = select_backend(runtime)
    model = LoadedModel.load(LoadSpec(name="bench", version="v1", path=vdir, backend=backend, delegate="auto",
                                      workers=workers, num_threads=1))
    x = bench_input()
    for _ in range(20):
        model.run([x])
    wall, invoke = [], []
    limit = time.monotonic() + 60
    for _ in range(n):
        t0 = time.perf_counter()
        r = model.run([x])
        wall.append(time.perf_counter() - t0)
        invoke.append(r.invoke_us / 1e6)
        if time.monotonic() > limit:
            break
    rps = inprocess_throughput(model, workers, tput_s)
    return {"runtime": backend.describe(), "delegate": model.delegate, "interpreters": workers,
            "run": ms(wall), "invoke_only": ms(invoke), "throughput_windows_rps": [rps],
            "throughput_rps": rps, "throughput_threads": workers, "_model": model}


def inprocess_throughput(model: Any, workers: int, seconds: float) -> float:
    """``workers`` threads, each taking its own interpreter from the pool, for ``seconds``."""
    x = bench_input()
    counts = [0] * workers
    start = threading.Event()
    end_at = [0.0]

    def loop(i: int) -> None:
        start.wait(10)
        for _ in range(1_000_000):
            if time.monotonic() >= end_at[0]:
                return
            model.run([x])
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    end_at[0] = t0 + seconds
    start.set()
    for t in threads:
        t.join(seconds + 30)
    return round(sum(counts) / (time.monotonic() - t0), 2)


def more_inprocess_windows(r: dict[str, Any], workers: int, seconds: float) -> None:
    """Another in-process throughput window; "best" is the max, as the box is shared and noisy."""
    rps = inprocess_throughput(r["_model"], workers, seconds)
    r["throughput_windows_rps"].append(rps)
    r["throughput_rps"] = max(r["throughput_windows_rps"])


def measure_echo(endpoint: str, env: dict[str, str], mode: str, n: int, spin_s: float = 0.0) -> dict[str, Any]:
    """Sequential round trips to the bare echo server, with the client work of edged.client (JSON both ways).

    With ``spin_s`` the server busy-waits that long before replying, so the client
    sits idle as long as it does while the daemon runs invoke(); the figure minus
    ``spin_s`` is the transport cost including waking an idle client.
    """
    import zmq

    proc = spawn_role("echo", {"endpoint": endpoint, "mode": mode, "spin_s": spin_s}, env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready" after bind
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        x = bench_input()
        lat = []
        limit = time.monotonic() + 60
        for i in range(n + 20):
            header = {"v": 1, "id": f"e-{i}", "op": "predict",
                      "inputs": [{"dtype": "uint8", "shape": list(INPUT_SHAPE)}]}
            t0 = time.perf_counter()
            sock.send_multipart([json.dumps(header, separators=(",", ":")).encode(), memoryview(x).cast("B")],
                                copy=False)
            if not sock.poll(5000):
                raise RuntimeError("echo server did not answer in 5 s")
            reply = sock.recv_multipart(copy=False)
            json.loads(bytes(reply[0].buffer))
            np.frombuffer(reply[-1].buffer, np.uint8)
            if i >= 20:
                lat.append(time.perf_counter() - t0 - spin_s)
            if time.monotonic() > limit:
                break
        sock.send_multipart([b"quit"])
        sock.close(0)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return ms(lat)


class Series:
    """Sequential latencies of one path (in-process, a floor server, a daemon), pooled over rounds."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.round_p50_ms: list[float] = []
        self.daemon: dict[str, list[float]] = {"total": [], "invoke": [], "queue": []}
        self.threads: dict[int, int] = {}

    def add_round(self, lat: list[float]) -> None:
        self.lat += lat
        self.round_p50_ms.append(round(pct(lat, 50) * 1000, 4))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"client": ms(self.lat), "round_p50_ms": self.round_p50_ms}
        if self.daemon["total"]:
            out.update({f"daemon_{k}": ms(v) for k, v in self.daemon.items()})
            out["threads"] = {str(k): v for k, v in sorted(self.threads.items())}
        return out


def latency_rounds(by_threads: dict[int, Any], endpoints: dict[str, str], rounds: int, n: int,
                   limit_s: float = 120.0) -> dict[str, Any]:
    """Side by side on a shared box: every path measured in each of ``rounds`` rounds.

    The paths are in-process at each thread count (``LoadedModel.run()``: set +
    invoke + get) and each endpoint (floor and daemon, ipc and TCP) through
    ``edged.client``.  Within a round they take turns request by request: step *j*
    sends one request down every path, in a fresh (seeded) random order, so no
    path always follows the same one and inherits its cache state.  A slow
    patch of this shared box (another tenant, a frequency change) then falls on
    every path alike, where blocks of requests per path let it fall on one: the
    c=1 verdicts compare p50s a few hundred µs apart, less than such a patch moves
    a block's p50.  Figures are pooled over the rounds; each round's p50 is kept so
    the ratios can be judged round by round too.
    """
    from edged.client import Client

    x = bench_input()
    clients = {label: Client(ep, timeout=10.0) for label, ep in endpoints.items()}
    # (label, one request down the path, whether it is served: a reply with the daemon's timing)
    paths: list[tuple[str, Callable[[], Any], bool]] = [
        (f"inprocess_t{t}", functools.partial(m.run, [x]), False) for t, m in sorted(by_threads.items())]
    paths += [(label, functools.partial(c.predict, x), True) for label, c in clients.items()]
    series = {label: Series() for label, _, _ in paths}
    load: list[float] = []
    rng = random.Random(0)
    try:
        for _ in range(rounds):
            load.append(round(os.getloadavg()[0], 2))
            for _label, call, _served in paths:  # re-warm each path
                for _ in range(10):
                    call()
            lat: dict[str, list[float]] = {label: [] for label, _, _ in paths}
            limit = time.monotonic() + limit_s
            order = paths[:]
            for _ in range(n):
                rng.shuffle(order)
                for label, call, served in order:
                    t0 = time.perf_counter()
                    r = call()
                    lat[label].append(time.perf_counter() - t0)
                    if served and r.timing:  # a daemon: its own split of the time, and the threads that ran it
                        s = series[label]
                        s.daemon["total"].append(r.timing["total_us"] / 1e6)
                        s.daemon["invoke"].append(r.timing["invoke_us"] / 1e6)
                        s.daemon["queue"].append(r.timing["queue_us"] / 1e6)
                        t = int(r.header.get("threads", 0))
                        s.threads[t] = s.threads.get(t, 0) + 1
                if time.monotonic() > limit:
                    break
            for label, samples in lat.items():
                series[label].add_round(samples)
    finally:
        for c in clients.values():
            c.close()
    out: dict[str, Any] = {"rounds": rounds, "n_per_round": n, "loadavg_per_round": load,
                           "inprocess": {str(t): series[f"inprocess_t{t}"].summary()["client"]
                                         | {"round_p50_ms": series[f"inprocess_t{t}"].round_p50_ms}
                                         for t in sorted(by_threads)}}
    for label in endpoints:
        out[label] = series[label].summary()
    return out


def throughput(endpoint: str | list[str], env: dict[str, str], concurrency: int, duration_s: float) -> dict[str, Any]:
    """``concurrency`` client processes, each a closed loop, all inside the same time window.

    ``endpoint`` may be a list: client *i* then talks to ``endpoint[i % len]`` (the
    served floor: one single-threaded server per core).
    """
    eps = [endpoint] if isinstance(endpoint, str) else endpoint
    start_at = time.monotonic() + 2.0 + 0.3 * concurrency  # room for the clients' imports
    procs = [spawn_role("client", {"endpoint": eps[i % len(eps)], "start_at": start_at, "duration_s": duration_s},
                        env, stdout=subprocess.PIPE) for i in range(concurrency)]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=duration_s + 60)
        if p.returncode != 0:
            raise RuntimeError(f"client process failed with {p.returncode}")
        results.append(json.loads(out))
    if time.monotonic() < start_at:
        raise RuntimeError("clients finished before the window opened")
    n = sum(r["n"] for r in results)
    lat = [v for r in results for v in r["lat"]]
    return {"concurrency": concurrency, "requests": n, "errors": sum(r["errors"] for r in results),
            "rps": round(n / duration_s, 2), "latency": ms(lat)}


class RssSampler(threading.Thread):
    """Samples a process's RSS (and its children's) every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.02, max_s: float = 120.0) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.interval, self.max_s = interval, max_s
        self.samples: list[tuple[float, int, int]] = []  # (t, daemon rss, children rss)
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        end = time.monotonic() + self.max_s
        while not self._halt.is_set() and time.monotonic() < end:
            try:
                rss = self.proc.memory_info().rss
                kids = 0
                for ch in self.proc.children(recursive=True):
                    try:
                        kids += ch.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.samples.append((time.monotonic(), rss, kids))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def measure_swap(d: DaemonRun, repo: Path, model_src: Path, golden: Path, env: dict[str, str], workdir: Path,
                 runtime: str, steady_s: float, version: str = "v2") -> dict[str, Any]:
    """Publish ``version`` with pack() while a client process loops predicts on the daemon."""
    from edged.repository.pack import pack

    out = workdir / f"swaploop-{version}.json"
    sampler = RssSampler(d.proc.pid)
    sampler.start()
    client = spawn_role("swaploop", {"endpoint": d.endpoint, "target": version, "tail_s": 1.5,
                                     "max_s": steady_s + 90, "out": str(out)}, env)
    time.sleep(steady_s + 0.5)  # client start-up plus a steady-state window
    renamed: list[float] = []
    orig_rename = os.rename

    def stamped_rename(a: Any, b: Any) -> None:  # pack() publishes with exactly one rename
        orig_rename(a, b)
        renamed.append(time.monotonic())

    os.rename = stamped_rename  # type: ignore[assignment]
    try:
        t_pack = time.monotonic()
        pack(model_src, name="bench", version=version, repo=repo, golden_inputs=[golden], runtime=runtime,
             created_by={"command": "scripts/bench.py", "seed": 1})
    finally:
        os.rename = orig_rename  # type: ignore[assignment]
    t_rename = renamed[-1]
    client.wait(120)
    sampler.stop()
    data = json.loads(out.read_text())
    rows = data["rows"]
    first_v2 = next((t1 for (t0, t1, v) in rows if v == version), None)
    client_start = rows[0][0] if rows else t_rename
    steady = [t1 - t0 for (t0, t1, _) in rows if client_start + 0.5 <= t0 < t_rename]
    window_end = (first_v2 if first_v2 is not None else t_rename) + 0.5
    during = [t1 - t0 for (t0, t1, _) in rows if t_rename <= t0 <= window_end or (t0 < t_rename < t1)]
    before = [rss for (t, rss, _) in sampler.samples if t < t_rename]
    swap_rss = [rss for (t, rss, _) in sampler.samples if t_rename <= t <= window_end + 1.0]
    kids = [k for (t, _, k) in sampler.samples if t_rename <= t <= window_end + 1.0]
    validated = d.logged_ms(r"validated in (\d+) ms")
    return {
        "version": version, "_steady": steady, "_during": during,
        "pack_s": round(t_rename - t_pack, 3),
        "first_v2_reply_s": round(first_v2 - t_rename, 3) if first_v2 is not None else None,
        "validation_ms": validated[-1] if validated else None,
        "steady": ms(steady), "during_swap": ms(during),
        "window_s": round(window_end - t_rename, 3),
        "rss_before_mb": round(float(np.median(before)) / 2**20, 1) if before else None,
        "rss_peak_mb": round(max(swap_rss) / 2**20, 1) if swap_rss else None,
        "validator_child_peak_mb": round(max(kids) / 2**20, 1) if kids else None,
        "rss_samples": len(sampler.samples),
        "errors": len(data["errors"]), "error_examples": data["errors"][:3],
        "versions_seen": sorted({v for (_, _, v) in rows}),
    }


def measure_swaps(d: DaemonRun, repo: Path, sources: list[Path], golden: Path, env: dict[str, str], workdir: Path,
                  runtime: str, steady_s: float, count: int) -> dict[str, Any]:
    """``count`` swaps in a row (v2, v3, …, alternating ``sources``), each under load.

    One swap window holds ~200 requests, so its p99 is its second-worst request: too
    few for a stable figure.  The verdicts use every swap's requests pooled (p99 of
    all swap windows against p99 of all steady windows), the slowest swap's time to
    first reply and the largest RSS growth; each swap is also listed.
    """
    runs = [measure_swap(d, repo, sources[i % len(sources)], golden, env, workdir, runtime, steady_s,
                         version=f"v{i + 2}") for i in range(count)]
    steady = [x for r in runs for x in r.pop("_steady")]
    during = [x for r in runs for x in r.pop("_during")]
    for r in runs:
        s99, d99 = r["steady"]["p99_ms"], r["during_swap"]["p99_ms"]
        r["p99_ratio"] = round(d99 / s99, 3) if s99 and d99 else None
    extra = [r["first_v2_reply_s"] - r["validation_ms"] / 1000 for r in runs
             if r["first_v2_reply_s"] is not None and r["validation_ms"] is not None]
    grow = [r["rss_peak_mb"] - r["rss_before_mb"] for r in runs
            if r["rss_peak_mb"] is not None and r["rss_before_mb"] is not None]
    peaks = [r["rss_peak_mb"] for r in runs if r["rss_peak_mb"] is not None]
    idle = runs[0]["rss_before_mb"]
    return {
        "count": count, "runs": runs, "steady": ms(steady), "during_swap": ms(during),
        "all_swapped": len(extra) == count,
        "worst_reply_minus_validation_s": round(max(extra), 3) if extra else None,
        "worst_rss_growth_mb": round(max(grow), 1) if grow else None,
        # The measure: the highest peak of any swap over the daemon before the first.
        "peak_over_idle_mb": round(max(peaks) - idle, 1) if peaks and idle is not None else None,
        "errors": sum(r["errors"] for r in runs),
    }


def thread_runtime_ns(pid: int) -> dict[str, int] | None:
    """Nanoseconds each thread of ``pid`` has run (``/proc/PID/task/*/schedstat``); None off Linux."""
    out: dict[str, int] = {}
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                comm = (task / "comm").read_text().strip()
                out[f"{task.name} {comm}"] = int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended meanwhile
    except OSError:
        return None
    return out or None


def idle_cpu(pid: int, seconds: float) -> dict[str, Any]:
    """The daemon's CPU while nobody talks to it.

    The figure is the scheduler's own run-time accounting summed over the daemon's
    threads (ns resolution).  psutil's user+system times are shown too; they count in
    10 ms clock ticks, too coarse for a few ms over 30 s.  A thread that ends inside
    the window is not counted (an idle daemon starts and ends none).
    """
    import psutil

    p = psutil.Process(pid)
    time.sleep(2.0)  # let the last replies and timers settle
    c0, r0, t0 = p.cpu_times(), thread_runtime_ns(pid), time.monotonic()
    time.sleep(seconds)
    c1, r1, t1 = p.cpu_times(), thread_runtime_ns(pid), time.monotonic()
    ticks = (c1.user - c0.user) + (c1.system - c0.system)
    out: dict[str, Any] = {"seconds": round(t1 - t0, 2), "psutil_cpu_s": round(ticks, 4),
                           "psutil_pct_core": round(100 * ticks / (t1 - t0), 4), "threads": p.num_threads()}
    if r0 is not None and r1 is not None:
        per_thread = {k: r1[k] - r0.get(k, 0) for k in r1}
        used = sum(per_thread.values()) / 1e9
        out["busiest_threads_ms"] = {k: round(v / 1e6, 3) for k, v in
                                     sorted(per_thread.items(), key=lambda kv: -kv[1])[:3] if v > 0}
        out["method"] = "schedstat"
    else:
        used = ticks
        out["method"] = "psutil"
    out.update(cpu_s=round(used, 5), pct_core=round(100 * used / (t1 - t0), 4))
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def build_checks(r: dict[str, Any]) -> list[dict[str, Any]]:
    ip = r["inprocess"]
    echo = r["echo_full"]
    ipc, tcp = r["edged_ipc"], r["edged_tcp"]
    checks = []

    def add(name: str, value: Any, target: str, ok: bool | None) -> None:
        checks.append({"figure": name, "value": value, "target": target, "result": verdict(ok)})

    lat = r["latency"]
    inp = lat["inprocess"]
    best_t = min(inp, key=lambda t: inp[t]["p50_ms"])
    ft = str(lat["floor_threads"])
    for label in ("ipc", "tcp"):
        fl, ed = lat[f"floor_{label}"]["client"], lat[f"edged_{label}"]["client"]
        best = inp[best_t]["p50_ms"]
        floor_over = fl["p50_ms"] - inp[ft]["p50_ms"]
        limit = best + 1.25 * floor_over
        over = ed["p50_ms"] - best
        lat[f"{label}_floor_overhead_ms"] = round(floor_over, 4)
        lat[f"{label}_edged_overhead_ms"] = round(over, 4)
        add(f"c=1 {label}: edged p50 ≤ best in-process + 1.25 × floor overhead",
            f"{ed['p50_ms']:.3f} ≤ {limit:.3f} ms ({best:.3f} @{best_t}t + 1.25 × {floor_over:.3f}); "
            f"overhead {over / floor_over:.2f}× the floor's", "≤ 1.25× floor", ed["p50_ms"] <= limit)
        # The same ratio within each round (each path measured minutes apart at most).
        per_round = []
        for i in range(lat["rounds"]):
            b = min(inp[t]["round_p50_ms"][i] for t in inp)
            fo = lat[f"floor_{label}"]["round_p50_ms"][i] - inp[ft]["round_p50_ms"][i]
            per_round.append(round((lat[f"edged_{label}"]["round_p50_ms"][i] - b) / fo, 2) if fo > 0 else None)
        lat[f"{label}_overhead_ratio_per_round"] = per_round
        add(f"  info: {label} edged overhead / floor overhead per round", str(per_round), "(≤ 1.25×)", None)
        # Robust to a noisy box: the two p50s of one round, a few seconds apart.
        p50_ratio = [round(e / f, 3) for e, f in zip(lat[f"edged_{label}"]["round_p50_ms"],
                                                     lat[f"floor_{label}"]["round_p50_ms"])]
        lat[f"{label}_p50_over_floor_per_round"] = p50_ratio
        add(f"  info: {label} edged p50 / floor p50 per round", f"median {float(np.median(p50_ratio)):.3f} "
            f"{p50_ratio}", "–", None)
        add(f"c=1 {label}: edged p99 ≤ 1.5 × floor p99", f"{ed['p99_ms'] / fl['p99_ms']:.2f}× ({ed['p99_ms']:.3f} / "
            f"{fl['p99_ms']:.3f} ms)", "≤ 1.5×", ed["p99_ms"] <= 1.5 * fl["p99_ms"])
    floor = r["latency"]["inprocess"]["1"]["p50_ms"]  # the same rounds, taking turns like edged
    for label, run in (("ipc", ipc), ("tcp", tcp)):
        over = run["latency"]["client"]["p50_ms"] - floor
        run["overhead_p50_ms"] = round(over, 4)
        add(f"edged {label} p50 − in-process p50 (1 thread)", f"{over:.3f} ms", "≤ 0.3 ms", over <= 0.3)
    over = ipc["overhead_p50_ms"]
    add("ipc overhead / bare echo p50 (ipc)", f"{over / echo['p50_ms']:.2f}× ({over:.3f} / {echo['p50_ms']:.3f} ms)",
        "≤ 1.35×", over <= 1.35 * echo["p50_ms"])
    spin = r["echo_shaped_spin"]["p50_ms"]
    add("  info: ipc overhead / echo with busy server", f"{over / spin:.2f}× ({over:.3f} / {spin:.3f} ms)",
        "(≤ 1.35×)", None)
    for label, run in (("ipc", ipc), ("tcp", tcp)):
        c4 = next(t for t in run["throughput"] if t["concurrency"] == 4)
        frac = c4["rps"] / ip["throughput_rps"]
        add(f"throughput c=4 {label} / in-process best ({ip['throughput_threads']} interp.)",
            f"{100 * frac:.1f}% ({c4['rps']:.1f} / {ip['throughput_rps']:.1f} /s)", "≥ 90%", frac >= 0.9)
    ratios = [p["ratio"] for p in ipc["c4_pairs"]]
    med = float(np.median(ratios))
    add("throughput c=4 ipc / in-process, same rounds", f"median {100 * med:.1f}% "
        f"{[round(100 * x, 1) for x in ratios]}", "≥ 90%", med >= 0.9)
    fr = [p["floor_ratio"] for p in ipc["c4_pairs"]]
    add("  floor: served floor c=4 / in-process, same rounds", f"median {100 * float(np.median(fr)):.1f}% "
        f"{[round(100 * x, 1) for x in fr]}", "(what any server gets)", None)
    eo = [p["edged_over_floor"] for p in ipc["c4_pairs"]]
    med = float(np.median(eo))
    add("throughput c=4 ipc / served floor, same rounds", f"median {100 * med:.1f}% "
        f"{[round(100 * x, 1) for x in eo]}", "≥ 90% (of the floor)", med >= 0.9)
    idle = r["idle_cpu"]
    add(f"idle CPU over {idle['seconds']:.0f} s", f"{idle['pct_core']:.3f}% of a core ({idle['cpu_s'] * 1000:.1f} ms, "
        f"{idle['method']})", "≤ 0.1%", idle["pct_core"] <= 0.1)
    rss = r["rss"]
    ratio = rss["daemon_after_load_mb"] / rss["bare_loaded_mb"]
    add("daemon RSS / bare process RSS", f"{ratio:.2f}× ({rss['daemon_after_load_mb']:.1f} / "
        f"{rss['bare_loaded_mb']:.1f} MB)", "≤ 1.25×", ratio <= 1.25)
    add("  info: memory of one model: pool + solo interpreter",
        f"{rss['model_footprint_mb']:.1f} MB = {rss['pool_interpreters_mb']:.1f} ({rss['bare_interpreters']} × 1 "
        f"thread) + {rss['solo_interpreter_mb']:.1f} (solo, {rss['bare_solo_threads']} threads)", "–", None)
    rd = r["ready"]
    add("start → first health reply", f"{rd['ready_s_median'] * 1000:.0f} ms (log: ready in "
        f"{rd['logged_ready_ms_median']:.0f} ms)", "≤ 1000 ms", rd["ready_s_median"] <= 1.0)
    sw = r["swap"]
    runs = sw["runs"]
    if sw["all_swapped"]:
        worst = max(runs, key=lambda x: x["first_v2_reply_s"] - x["validation_ms"] / 1000)
        extra = sw["worst_reply_minus_validation_s"]
        add(f"swap: manifest → first reply, minus validation (worst of {len(runs)})",
            f"{extra * 1000:.0f} ms ({worst['first_v2_reply_s'] * 1000:.0f} − {worst['validation_ms']:.0f} ms)",
            "≤ 500 ms", extra <= 0.5)
    else:
        add("swap: manifest → first reply", "a swap never replied from its new version", "≤ 500 ms + validation",
            False)
    if sw["during_swap"]["p99_ms"] and sw["steady"]["p99_ms"]:
        f = sw["during_swap"]["p99_ms"] / sw["steady"]["p99_ms"]
        add(f"swap: p99 during swaps / steady p99 ({len(runs)} swaps pooled)",
            f"{f:.2f}× ({sw['during_swap']['p99_ms']:.2f} / {sw['steady']['p99_ms']:.2f} ms)", "≤ 1.5×", f <= 1.5)
    one_model = rss["model_footprint_mb"]
    if sw["peak_over_idle_mb"] is not None:
        add("swap: peak RSS − idle daemon before the first swap", f"{sw['peak_over_idle_mb']:.1f} MB "
            f"(worst single swap {sw['worst_rss_growth_mb']:.1f}; one model {one_model:.1f} MB)",
            f"≤ 2× model = {2 * one_model:.1f} MB", sw["peak_over_idle_mb"] <= 2 * one_model)
    add("swap: failed requests during the swaps", str(sw["errors"]), "0", sw["errors"] == 0)
    return checks


def print_report(r: dict[str, Any]) -> None:
    ip, echo, shaped, spin = r["inprocess"], r["echo_full"], r["echo_shaped"], r["echo_shaped_spin"]
    lines = [
        "",
        f"edged benchmark — {r['machine']['cpu_model']}, {r['machine']['nproc']} CPUs, {r['runtime']}, "
        f"model {r['model']['size_bytes']} B, input {list(INPUT_SHAPE)} uint8, workers {r['workers']}, "
        f"solo_threads {r['solo_threads']} ({r['workers_from']})",
        f"daemon: parallelism: {r['daemon_parallelism']}"
        + ("  [--quick]" if r["quick"] else ""),
        "",
        f"{'measurement':44} {'p50 ms':>9} {'p99 ms':>9} {'n':>6}",
        f"{'in-process run() (set+invoke+get), 1 thread':44} {ip['run']['p50_ms']:9.3f} {ip['run']['p99_ms']:9.3f} "
        f"{ip['run']['n']:6}",
        f"{'in-process invoke() alone':44} {ip['invoke_only']['p50_ms']:9.3f} {ip['invoke_only']['p99_ms']:9.3f} "
        f"{ip['invoke_only']['n']:6}",
        f"{'bare zmq echo ipc (150 KB both ways)':44} {echo['p50_ms']:9.3f} {echo['p99_ms']:9.3f} {echo['n']:6}",
        f"{'bare zmq echo ipc (150 KB in, 1 KB out)':44} {shaped['p50_ms']:9.3f} {shaped['p99_ms']:9.3f} "
        f"{shaped['n']:6}",
        f"{'  same, server busy ' + format(spin['spin_ms'], '.2f') + ' ms first (minus it)':44} {spin['p50_ms']:9.3f} "
        f"{spin['p99_ms']:9.3f} {spin['n']:6}",
    ]
    lat = r["latency"]
    lines += ["", f"side by side, {lat['rounds']} rounds × {lat['n_per_round']} (load avg per round "
              f"{lat['loadavg_per_round']}; pooled, then each round's p50)"]
    for t, x in lat["inprocess"].items():
        lines.append(f"{'in-process run(), ' + t + ' thread(s)':44} {x['p50_ms']:9.3f} {x['p99_ms']:9.3f} {x['n']:6}"
                     f"   {x['round_p50_ms']}")
    for label in ("ipc", "tcp"):
        fl = lat[f"floor_{label}"]
        lines.append(f"{'floor server ' + label + ' (' + str(lat['floor_threads']) + ' threads)':44} "
                     f"{fl['client']['p50_ms']:9.3f} {fl['client']['p99_ms']:9.3f} {fl['client']['n']:6}"
                     f"   {fl['round_p50_ms']}")
        run = lat[f"edged_{label}"]
        lines.append(f"{'edged ' + label + ' predict (client round trip)':44} {run['client']['p50_ms']:9.3f} "
                     f"{run['client']['p99_ms']:9.3f} {run['client']['n']:6}   {run['round_p50_ms']}")
        lines.append(f"{'  daemon total_us / invoke_us (' + label + ')':44} {run['daemon_total']['p50_ms']:9.3f} "
                     f"{run['daemon_total']['p99_ms']:9.3f}   invoke p50 {run['daemon_invoke']['p50_ms']:.3f}, "
                     f"threads {run['threads']}")
    lines += ["", f"{'throughput (req/s)':44} {'c=1':>9} {'c=2':>9} {'c=4':>9}",
              f"{'in-process, ' + str(ip['throughput_threads']) + ' threads × own 1-thread interp.':44} "
              f"{'':9} {ip['throughput_rps']:9.1f}   best of windows {ip['throughput_windows_rps']}"]
    t = {x["concurrency"]: x for x in r["served_floor"]["throughput"]}
    lines.append(f"{'served floor: ' + str(r['served_floor']['servers']) + ' × 1-thread floor servers':44} "
                 + " ".join(f"{t[c]['rps']:9.1f}" for c in (1, 2, 4)))
    for label in ("ipc", "tcp"):
        t = {x["concurrency"]: x for x in r[f"edged_{label}"]["throughput"]}
        lines.append(f"{'edged ' + label + ' (client processes)':44} " + " ".join(
            f"{t[c]['rps']:9.1f}" for c in (1, 2, 4)))
    sw = r["swap"]
    lines += ["", f"swaps under load ({sw['count']}): p99 during / steady per swap "
              + ", ".join(f"{x['version']} {x['p99_ratio']}×" for x in sw["runs"])
              + f"; pooled n = {sw['during_swap']['n']} during, {sw['steady']['n']} steady"]
    lines += ["", f"{'figure':54} {'value':44} {'target':22} result"]
    for c in r["checks"]:
        lines.append(f"{c['figure']:54} {str(c['value']):44} {c['target']:22} {c['result']}")
    if r["quick"]:
        lines.append(f"\nNOTE: --quick: idle CPU measured over {r['idle_cpu']['seconds']:.0f} s (not 30 s), "
                     "fewer samples and shorter throughput windows; use a full run for the record.")
    print("\n".join(lines))


def machine_facts(runtime_desc: str) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import zmq

    return {"nproc": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
            "kernel": platform.release(), "numpy": np.__version__, "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(), "runtime": runtime_desc,
            "loadavg_at_start": [round(v, 2) for v in os.getloadavg()]}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def bench_env() -> dict[str, str]:
    """Environment for the daemon and client subprocesses: this checkout first on the path,
    and never a real systemd, daemon or config from the caller's environment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in ("NOTIFY_SOCKET", "EDGED_CONFIG", "EDGED_ENDPOINT", "EDGED_CONTROL_ENDPOINT"):
        env.pop(k, None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in [os.environ.get("PYTHONPATH")] if p]])
    return env


@contextlib.contextmanager
def scratch(prefix: str, keep: bool) -> Iterator[tuple[Path, list[DaemonRun]]]:
    """A temporary directory and a list to register daemons in.

    On an error the tail of each live daemon's log is printed; on the way out every
    daemon is stopped and the directory removed (kept with ``keep``).
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: ipc paths ≤ ~107 bytes
    daemons: list[DaemonRun] = []
    try:
        yield workdir, daemons
    except Exception:
        for d in daemons:
            if d.proc.poll() is None:
                log(f"daemon log {d.log_path}:\n{d.log_text()[-3000:]}")
        raise
    finally:
        for d in daemons:
            d.stop()
        if keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edged import config as config_mod
    from edged.repository.pack import pack
    from edged.runtime.backends import select_backend
    from edged.runtime.model import LoadedModel, LoadSpec
    from edged.testing.tflite_build import mobilenet_class_model

    quick = args.quick
    n_lat = 300 if quick else 2000
    n_inproc = 300 if quick else 2000
    rounds = args.rounds or (2 if quick else 3)
    n_round = 200 if quick else 500
    tput_s = 3.0 if quick else 10.0
    idle_s = 5.0 if quick else 30.0
    starts = 1 if quick else 3
    # What the daemon will choose by itself (or --workers): the in-process floors use as much.
    cores, memory = config_mod.machine()
    eff = config_mod.Config()
    eff.server.workers = args.workers or 0
    config_mod.derive_parallelism(eff, cores, memory)
    workers, solo = eff.server.workers, eff.runtime.solo_threads
    backend = select_backend(args.runtime)
    result: dict[str, Any] = {"quick": quick, "workers": workers, "solo_threads": solo, "cores": cores,
                              "workers_from": "--workers" if args.workers else "daemon default (auto)",
                              "runtime": backend.describe(),
                              "command": " ".join([Path(sys.executable).name, "scripts/bench.py", *sys.argv[1:]]),
                              "machine": machine_facts(backend.describe())}
    env = bench_env()
    with scratch("edged-bench-", args.keep) as (workdir, daemons):
        (workdir / "edged.toml").write_text("# the daemon's defaults\n")
        log(f"building the MobileNet-class model in {workdir}")
        t0 = time.monotonic()
        src1, src2 = workdir / "bench-v1.tflite", workdir / "bench-v2.tflite"
        src1.write_bytes(mobilenet_class_model(seed=0))
        src2.write_bytes(mobilenet_class_model(seed=1))
        golden = workdir / "golden.npy"
        np.save(golden, bench_input())
        repo = workdir / "models"
        vdir = pack(src1, name="bench", version="v1", repo=repo, golden_inputs=[golden], runtime=args.runtime,
                    created_by={"command": "scripts/bench.py", "seed": 0})
        result["model"] = {"size_bytes": src1.stat().st_size, "build_and_pack_s": round(time.monotonic() - t0, 2)}

        log(f"in-process floor ({workers} × 1-thread interpreters)")
        result["inprocess"] = measure_inprocess(vdir, args.runtime, workers, n_inproc, tput_s)
        by_threads = {t: LoadedModel.load(LoadSpec(name="bench", version="v1", path=vdir, backend=backend,
                                                   delegate="auto", workers=1, num_threads=t))
                      for t in range(1, cores + 1)}

        log("bare zmq echo over ipc")
        result["echo_full"] = measure_echo(f"ipc://{workdir}/echo.sock", env, "full", n_lat)
        result["echo_shaped"] = measure_echo(f"ipc://{workdir}/echo2.sock", env, "shaped", n_lat)
        spin = result["inprocess"]["run"]["p50_ms"] / 1000
        result["echo_shaped_spin"] = measure_echo(f"ipc://{workdir}/echo3.sock", env, "shaped", n_lat // 2, spin)
        result["echo_shaped_spin"]["spin_ms"] = round(spin * 1000, 3)

        log("bare process RSS")
        bare = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--role", "bare",
                               json.dumps({"model": str(vdir / "model.tflite"), "runtime": args.runtime,
                                           "workers": workers, "solo_threads": solo})],
                              capture_output=True, text=True, env=env, timeout=120, check=True)
        b = json.loads(bare.stdout)

        ipc_ep, ctl_ep = f"ipc://{workdir}/p.sock", f"ipc://{workdir}/c.sock"
        ready, logged = [], []
        d = None
        for i in range(starts):
            log(f"daemon start {i + 1}/{starts} (ipc)")
            d = start_daemon(daemons, repo, ipc_ep, ctl_ep, workdir, args.runtime, args.workers, env, f"ipc{i}")
            ready.append(d.ready_s)
            got = d.logged_ms(r"ready in (\d+) ms")
            logged.append(got[-1] if got else float("nan"))
            if i < starts - 1:
                d.stop()
        assert d is not None
        result["ready"] = {"ready_s": [round(v, 3) for v in ready], "logged_ready_ms": logged,
                           "ready_s_median": float(np.median(ready)), "logged_ready_ms_median": float(np.median(logged))}
        parallelism = re.findall(r"parallelism: (.*)", d.log_text())
        result["daemon_parallelism"] = parallelism[-1] if parallelism else None
        import psutil

        time.sleep(1.0)
        rss_load = psutil.Process(d.proc.pid).memory_info().rss

        port = free_port()
        tcp_ep = f"tcp://127.0.0.1:{port}"
        log(f"edged over {tcp_ep}")
        # Runs beside the ipc daemon: one daemon per runtime directory and per repository
        # (edged.server.instance), so it gets its own of each.
        tcp_dir = private_copy(repo, workdir / "tcp")
        dt = start_daemon(daemons, tcp_dir / "models", tcp_ep, f"ipc://{tcp_dir}/c.sock", workdir, args.runtime,
                          args.workers, env, "tcp")
        floor_threads = solo  # derive_parallelism leaves it ≥ 1
        floor_eps = {"floor_ipc": f"ipc://{workdir}/floor.sock", "floor_tcp": f"tcp://127.0.0.1:{free_port()}"}
        with floor_servers(list(floor_eps.values()), floor_threads, vdir / "model.tflite", args.runtime, env):
            log(f"latency: {rounds} rounds of in-process 1..{cores} threads, floor and edged over ipc and tcp")
            lat = latency_rounds(by_threads, {"floor_ipc": floor_eps["floor_ipc"], "edged_ipc": ipc_ep,
                                              "floor_tcp": floor_eps["floor_tcp"], "edged_tcp": tcp_ep},
                                 rounds, n_round)
        lat["floor_threads"] = floor_threads
        result["latency"] = lat
        del by_threads

        tcp: dict[str, Any] = {"endpoint": tcp_ep, "latency": lat["edged_tcp"], "throughput": []}
        for c in (1, 2, 4):
            log(f"edged over tcp: throughput, concurrency {c}")
            tcp["throughput"].append(throughput(tcp_ep, env, c, tput_s))
        result["edged_tcp"] = tcp
        dt.stop()
        log("in-process throughput again (interleaved with the edged windows)")
        more_inprocess_windows(result["inprocess"], workers, tput_s)

        ipc: dict[str, Any] = {"latency": lat["edged_ipc"], "throughput": []}
        for c in (1, 2, 4):
            log(f"edged over ipc: throughput, concurrency {c}")
            ipc["throughput"].append(throughput(ipc_ep, env, c, tput_s))
        more_inprocess_windows(result["inprocess"], workers, tput_s)
        # The served floor for throughput: what the best possible server gets here, with
        # the client processes on the same cores.  One single-threaded floor server per
        # worker, each with a 1-thread interpreter (no GIL, no queue, no hand-off); the
        # clients are spread over them.
        pool_eps = [f"ipc://{workdir}/floor1-{i}.sock" for i in range(workers)]
        with floor_servers(pool_eps, 1, vdir / "model.tflite", args.runtime, env):
            served_floor = []
            for c in (1, 2, 4):
                log(f"served floor ({workers} × 1-thread floor servers): throughput, concurrency {c}")
                served_floor.append(throughput(pool_eps, env, c, tput_s))
            result["served_floor"] = {"servers": workers, "throughput": served_floor}
            log(f"c=4 side by side: {rounds} rounds of in-process, served floor and edged ipc windows")
            pairs = []
            for i in range(rounds):
                inproc = inprocess_throughput(result["inprocess"]["_model"], workers, tput_s)
                # The served floor and edged take turns at following the in-process window.
                order = [("floor", pool_eps), ("edged", ipc_ep)]
                got = {name: throughput(ep, env, 4, tput_s) for name, ep in (order if i % 2 == 0 else order[::-1])}
                if any(t["errors"] for t in got.values()):  # timeouts would read as a slow server
                    failed = {k: t["errors"] for k, t in got.items()}
                    raise RuntimeError(f"c=4 side by side: failed requests {failed}")
                fl_rps, served = got["floor"]["rps"], got["edged"]["rps"]
                pairs.append({"inprocess_rps": inproc, "served_floor_c4_rps": fl_rps, "edged_ipc_c4_rps": served,
                              "ratio": round(served / inproc, 3), "floor_ratio": round(fl_rps / inproc, 3),
                              "edged_over_floor": round(served / fl_rps, 3)})
        ipc["c4_pairs"] = pairs
        del result["inprocess"]["_model"]  # release the interpreters before the swap test
        result["edged_ipc"] = ipc
        rss_traffic = psutil.Process(d.proc.pid).memory_info().rss
        mb = 2**20
        result["rss"] = {
            "daemon_after_load_mb": round(rss_load / mb, 1), "daemon_after_traffic_mb": round(rss_traffic / mb, 1),
            "bare_imports_mb": round(b["rss_imported"] / mb, 1), "bare_loaded_mb": round(b["rss_loaded"] / mb, 1),
            "model_footprint_mb": round((b["rss_loaded"] - b["rss_imported"]) / mb, 1),
            "pool_interpreters_mb": round((b["rss_pool"] - b["rss_imported"]) / mb, 1),
            "solo_interpreter_mb": round((b["rss_loaded"] - b["rss_pool"]) / mb, 1),
            "bare_interpreters": workers, "bare_solo_threads": solo,
        }
        log(f"idle CPU over {idle_s:.0f} s")
        result["idle_cpu"] = idle_cpu(d.proc.pid, idle_s)
        d.stop()

        log("hot swap v1 → v2 under load (ipc)")
        d = start_daemon(daemons, repo, ipc_ep, ctl_ep, workdir, args.runtime, args.workers, env, "swap")
        result["swap"] = measure_swaps(d, repo, [src2, src1], golden, env, workdir, args.runtime,
                                       3.0 if quick else 4.0, 1 if quick else 5)
        d.stop()
        result["checks"] = build_checks(result)
        result["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="benchmark edged against in-process and bare-transport floors")
    p.add_argument("--quick", action="store_true", help="fewer samples, 3 s windows, 5 s idle CPU (not for the record)")
    p.add_argument("--out", type=Path, help="also write every figure as JSON here")
    p.add_argument("--runtime", default="auto", choices=["auto", "litert", "tflite-runtime", "tensorflow"])
    p.add_argument("--workers", type=int, default=0,
                   help="daemon workers = in-process interpreters (default: the daemon's own choice)")
    p.add_argument("--rounds", type=int, default=0, help="latency rounds (default 3; --quick 2)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (daemon logs)")
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("role_args", nargs="?", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        return ROLES[args.role](json.loads(args.role_args))
    result = run(args)
    print_report(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.out}")
    return 0 if all(c["result"] != "MISS" for c in result["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
