"""Stats per model version, as a JSON snapshot and as Prometheus text.

:class:`Stats` is the one thread-safe collector: worker threads record each
finished request, the main loop records throttled/shed rejections, the
repository records swaps and rollbacks.  :meth:`Stats.snapshot` returns a
JSON-able dict (the ``stats`` op's reply); :func:`prometheus_text` renders a
snapshot in the Prometheus text exposition format 0.0.4 (``edged ctl stats
--prometheus`` and the optional HTTP endpoint from :func:`serve_metrics`).

Counting rules, per ``(model, version)``:

* every request for a model version ends in exactly one of
  :meth:`Stats.observe` (it reached admission: success or error),
  :meth:`Stats.throttled` (refused by the power governor) or
  :meth:`Stats.shed` (dropped by load shedding: queue full or deadline
  passed before a worker took it), so the three counters add up to all replies;
* ``errors`` counts by wire error code the ``observe(..., error=code)`` calls,
  and is a subset of ``requests``;
* ``swaps`` counts times the version became current; ``rollbacks`` counts
  times the version was rolled back *from* (the bad one), so a rollback shows
  next to the version that caused it;
* ``cpu_seconds`` is the sum of thread CPU time deltas the worker measured
  around ``invoke()`` with :func:`time.thread_time` (CPU the delegate spends
  in its own threads, e.g. XNNPACK's pool, is not included).

Latency percentiles come from the fixed-bucket histogram, not from a sample
of raw values: the histogram is what Prometheus sees, costs O(buckets) memory
forever, and never forgets old requests (a reservoir of recent requests would
disagree with the exported histogram).  Within a bucket the value is linearly
interpolated, as PromQL's ``histogram_quantile`` does, and clamped to the
smallest/largest latency actually seen, so the error is at most one bucket's
width (the buckets follow a 1-2.5-5 series, i.e. within ~2.5x at worst, much
less in practice) and exact when all values fall in one bucket.
"""

from __future__ import annotations

import bisect
import logging
import math
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("edged.server.metrics")

#: Upper bounds of the latency histogram buckets, in microseconds (+Inf is implicit).
LATENCY_BUCKETS_US: tuple[int, ...] = (
    100, 250, 500,
    1_000, 2_500, 5_000,
    10_000, 25_000, 50_000,
    100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
)

PERCENTILES = (50, 95, 99)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Version:
    """Counters of one (model, version); guarded by the owning Stats' lock."""

    __slots__ = ("requests", "errors", "throttled", "shed", "swaps", "rollbacks", "cpu_seconds",
                 "bucket_counts", "latency_sum_us", "latency_count", "latency_min_us", "latency_max_us")

    def __init__(self, n_buckets: int) -> None:
        self.requests = 0
        self.errors: dict[str, int] = {}
        self.throttled = 0
        self.shed = 0
        self.swaps = 0
        self.rollbacks = 0
        self.cpu_seconds = 0.0
        self.bucket_counts = [0] * (n_buckets + 1)  # last one is +Inf; not cumulative
        self.latency_sum_us = 0
        self.latency_count = 0
        self.latency_min_us: int | None = None
        self.latency_max_us: int | None = None


class Stats:
    """Thread-safe counters, gauge and latency histogram per (model, version).

    ``queue_depth`` may be a callable read at snapshot time (e.g. the
    scheduler's ``depth``); otherwise set the gauge with :meth:`set_queue_depth`.
    """

    def __init__(self, buckets_us: Iterable[int] = LATENCY_BUCKETS_US,
                 queue_depth: Callable[[], int] | None = None) -> None:
        self.buckets_us = tuple(int(b) for b in buckets_us)
        if not self.buckets_us or list(self.buckets_us) != sorted(set(self.buckets_us)) or self.buckets_us[0] <= 0:
            raise ValueError(f"buckets_us must be positive and strictly increasing, got {self.buckets_us!r}")
        self._queue_depth_fn = queue_depth
        self._queue_depth = 0
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], _Version] = {}
        self._frigate_dropped: dict[str, int] = {}

    def _get(self, model: str, version: str) -> _Version:
        key = (model, version)
        v = self._versions.get(key)
        if v is None:
            v = self._versions[key] = _Version(len(self.buckets_us))
        return v

    # -- recording (any thread) ---------------------------------------------------------------

    def observe(self, model: str, version: str, *, latency_us: int | float | None = None,
                error: str | None = None, cpu_s: float = 0.0) -> None:
        """Count one request that was admitted; with its latency and CPU time if it ran."""
        with self._lock:
            v = self._get(model, version)
            v.requests += 1
            if error is not None:
                code = str(getattr(error, "value", error))  # accept an ErrorCode member too
                v.errors[code] = v.errors.get(code, 0) + 1
            if cpu_s > 0:
                v.cpu_seconds += cpu_s
            if latency_us is not None:
                us = max(0, int(latency_us))
                v.bucket_counts[bisect.bisect_left(self.buckets_us, us)] += 1
                v.latency_sum_us += us
                v.latency_count += 1
                v.latency_min_us = us if v.latency_min_us is None else min(v.latency_min_us, us)
                v.latency_max_us = us if v.latency_max_us is None else max(v.latency_max_us, us)

    def throttled(self, model: str, version: str) -> None:
        with self._lock:
            self._get(model, version).throttled += 1

    def shed(self, model: str, version: str) -> None:
        with self._lock:
            self._get(model, version).shed += 1

    def frigate_dropped(self, reason: str) -> None:
        """A Frigate frame answered with no detections instead of a result (edged/server/frigate.py)."""
        with self._lock:
            self._frigate_dropped[reason] = self._frigate_dropped.get(reason, 0) + 1

    def swapped(self, model: str, to_version: str) -> None:
        """``to_version`` became the current version of ``model``."""
        with self._lock:
            self._get(model, to_version).swaps += 1

    def rolled_back(self, model: str, from_version: str) -> None:
        """``from_version`` of ``model`` was rolled back (it is the one that failed)."""
        with self._lock:
            self._get(model, from_version).rollbacks += 1

    def set_queue_depth(self, depth: int) -> None:
        self._queue_depth = int(depth)  # a single int store is atomic under the GIL

    def forget(self, model: str, version: str | None = None) -> None:
        """Drop the counters of a removed version (or every version of ``model``)."""
        with self._lock:
            for key in [k for k in self._versions if k[0] == model and (version is None or k[1] == version)]:
                del self._versions[key]

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of every counter, taken under the lock (consistent per call).

        Shape::

            {"queue_depth": 3,
             "latency_buckets_us": [100, 250, ...],
             "models": [{"model": "digits", "version": "v2", "requests": 10,
                         "errors": {"BAD_SHAPE": 1}, "throttled": 0, "shed": 0,
                         "swaps": 1, "rollbacks": 0, "cpu_seconds": 0.0123,
                         "latency_us": {"p50": 812.0, "p95": 2100.0, "p99": 2400.0,
                                        "count": 9, "sum": 9000, "min": 500, "max": 2450,
                                        "buckets": [0, 0, 2, ...]}}],
             "frigate_dropped": {"budget": 2, "input": 1}}

        ``latency_us.buckets`` are per-bucket (not cumulative) counts, one per
        entry of ``latency_buckets_us`` plus a final +Inf bucket.  Percentiles
        are None when nothing was timed yet.
        """
        depth = self._queue_depth
        if self._queue_depth_fn is not None:
            try:
                depth = int(self._queue_depth_fn())
            except Exception:  # a stats call must not fail because a gauge source did
                log.exception("queue depth source failed; reporting the last set value")
        with self._lock:
            models = []
            for (name, version), v in sorted(self._versions.items()):
                latency: dict[str, Any] = {
                    f"p{p}": _quantile(self.buckets_us, v.bucket_counts, p / 100, v.latency_min_us, v.latency_max_us)
                    for p in PERCENTILES
                }
                latency.update(count=v.latency_count, sum=v.latency_sum_us, min=v.latency_min_us,
                               max=v.latency_max_us, buckets=list(v.bucket_counts))
                models.append({
                    "model": name, "version": version, "requests": v.requests, "errors": dict(v.errors),
                    "throttled": v.throttled, "shed": v.shed, "swaps": v.swaps, "rollbacks": v.rollbacks,
                    "cpu_seconds": round(v.cpu_seconds, 6), "latency_us": latency,
                })
            dropped = dict(sorted(self._frigate_dropped.items()))
        return {"queue_depth": depth, "latency_buckets_us": list(self.buckets_us), "models": models,
                "frigate_dropped": dropped}


def _quantile(bounds: tuple[int, ...], counts: list[int], q: float,
              lo_seen: int | None, hi_seen: int | None) -> float | None:
    """The q-quantile from per-bucket counts, interpolated within its bucket."""
    total = sum(counts)
    if total == 0 or lo_seen is None or hi_seen is None:
        return None
    rank = q * total
    cumulative = 0
    for i, c in enumerate(counts):
        if c and cumulative + c >= rank:
            lower = bounds[i - 1] if i > 0 else 0
            upper = bounds[i] if i < len(bounds) else hi_seen
            # Clamp to what was actually seen: tightens the first, last and +Inf buckets.
            lower, upper = max(lower, lo_seen), min(upper, hi_seen)
            if upper <= lower:
                return float(upper)
            return float(lower + (upper - lower) * (rank - cumulative) / c)
        cumulative += c
    return float(hi_seen)  # pragma: no cover - rank <= total always lands above


# -- Prometheus text exposition -------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _fmt(value: float | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(pairs: Mapping[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in pairs.items()) + "}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Mapping[str, str], value: float | int) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_fmt(value)}")


# (snapshot key, metric name, help) for the plain per-version counters.
_COUNTERS = (
    ("requests", "edged_requests_total", "Requests admitted for a model version (success or error)."),
    ("throttled", "edged_throttled_total", "Requests refused by the power governor (THROTTLED)."),
    ("shed", "edged_shed_total", "Requests dropped by load shedding (queue full or deadline passed)."),
    ("swaps", "edged_model_swaps_total", "Times the model version became current."),
    ("rollbacks", "edged_model_rollbacks_total", "Times the model version was rolled back."),
    ("cpu_seconds", "edged_inference_cpu_seconds_total", "Thread CPU time spent in invoke() for the model version."),
)


def prometheus_text(snapshot: Mapping[str, Any]) -> str:
    """Render a :meth:`Stats.snapshot` in the Prometheus text format 0.0.4.

    Latency is exported in seconds (Prometheus' base unit) as the histogram
    ``edged_request_latency_seconds``; the bucket bounds are the same as the
    snapshot's microsecond bounds divided by 10**6.  Every family gets HELP and
    TYPE lines even when it has no samples yet, so dashboards see the names.
    Missing keys in a snapshot are read as zero (an older daemon's snapshot).
    """
    w = _Writer()
    models: list[Mapping[str, Any]] = list(snapshot.get("models", []))
    bounds_us: list[int] = list(snapshot.get("latency_buckets_us", []))

    w.family("edged_queue_depth", "gauge", "Requests waiting for a worker.")
    w.sample("edged_queue_depth", {}, int(snapshot.get("queue_depth", 0) or 0))

    for key, name, help_text in _COUNTERS:
        w.family(name, "counter", help_text)
        for m in models:
            value = m.get(key, 0) or 0
            w.sample(name, {"model": m["model"], "version": m["version"]}, float(value) if key == "cpu_seconds" else int(value))

    w.family("edged_errors_total", "counter", "Admitted requests that ended in an error, by wire error code.")
    for m in models:
        for code, n in sorted((m.get("errors") or {}).items()):
            w.sample("edged_errors_total", {"model": m["model"], "version": m["version"], "code": code}, int(n))

    w.family("edged_frigate_dropped_total", "counter",
             "Frigate frames answered with no detections instead of a result, by reason.")
    for reason, n in sorted((snapshot.get("frigate_dropped") or {}).items()):
        w.sample("edged_frigate_dropped_total", {"reason": reason}, int(n))

    name = "edged_request_latency_seconds"
    w.family(name, "histogram", "Time from receiving a request to sending its reply.")
    for m in models:
        lat = m.get("latency_us") or {}
        counts = lat.get("buckets")
        if not counts or len(counts) != len(bounds_us) + 1:
            continue  # no histogram in this snapshot: nothing honest to write
        labels = {"model": m["model"], "version": m["version"]}
        cumulative = 0
        for bound, c in zip(bounds_us, counts):
            cumulative += int(c)
            w.sample(f"{name}_bucket", {**labels, "le": _fmt(bound / 1_000_000)}, cumulative)
        cumulative += int(counts[-1])
        w.sample(f"{name}_bucket", {**labels, "le": "+Inf"}, cumulative)
        w.sample(f"{name}_sum", labels, float(lat.get("sum", 0) or 0) / 1_000_000)
        w.sample(f"{name}_count", labels, cumulative)

    # Health signals over each version's window (edged.repository.health); gauges, since
    # they are ratios over the last N requests, not running totals.
    health: Mapping[str, Mapping[str, Mapping[str, Any]]] = snapshot.get("health") or {}
    for key, name, help_text in _HEALTH_GAUGES:
        w.family(name, "gauge", help_text)
        for model, versions in sorted(health.items()):
            for version, h in sorted(versions.items()):
                if h.get(key) is not None:
                    w.sample(name, {"model": model, "version": version}, float(h[key]))
    w.family("edged_feedback_total", "counter", "Feedback reports matched to a prediction of this version.")
    for model, versions in sorted(health.items()):
        for version, h in sorted(versions.items()):
            w.sample("edged_feedback_total", {"model": model, "version": version}, int(h.get("feedback_total", 0)))

    return "\n".join(w.lines) + "\n"


_HEALTH_GAUGES = (
    ("error_rate", "edged_window_error_rate", "Share of the version's last requests that failed in the model."),
    ("nonfinite_rate", "edged_window_nonfinite_rate", "Share of the version's last requests with NaN/Inf outputs."),
    ("low_confidence_share", "edged_window_low_confidence_share",
     "Share of the version's last classifier answers with top-1 probability under health.low_confidence."),
    ("p95_ms", "edged_window_latency_p95_ms", "p95 invoke latency over the version's window, in milliseconds."),
    ("accuracy", "edged_live_accuracy", "Live accuracy from application feedback over the version's window."),
)


# -- optional HTTP endpoint --------------------------------------------------------------------


class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`close` stops it (bounded wait)."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    def close(self, timeout: float = 5.0) -> None:
        self._httpd.shutdown()  # returns once serve_forever() has left its loop
        self._httpd.server_close()
        self._thread.join(timeout)


def serve_metrics(host: str, port: int, get_text: Callable[[], str]) -> MetricsServer:
    """Serve ``GET /metrics`` (text format 0.0.4) from a daemon thread; port 0 picks one.

    Uses the stdlib's http.server rather than prometheus_client's
    ``start_http_server``: we already render the text ourselves (from the same
    snapshot the ``stats`` op returns), prometheus_client would need a custom
    collector re-describing every family, and the daemon then has no runtime
    dependency on it.  ``get_text`` is called on the server's thread for each
    scrape; it must be thread-safe (``lambda: prometheus_text(stats.snapshot())`` is).
    Raises OSError if the address cannot be bound.
    """

    class Handler(BaseHTTPRequestHandler):
        server_version = "edged-metrics"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404, "try /metrics")
                return
            try:
                body = get_text().encode("utf-8")
            except Exception:
                log.exception("rendering metrics failed")
                self.send_error(500, "rendering metrics failed; see the daemon log")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature from http.server
            log.debug("metrics %s - %s", self.address_string(), format % args)

    server_cls = ThreadingHTTPServer
    if ":" in host:  # an IPv6 literal such as ::1; http.server defaults to AF_INET
        server_cls = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    httpd = server_cls((host.strip("[]"), port), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.5},
                              name="edged-metrics", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)
