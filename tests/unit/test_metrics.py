"""Stats collector, percentiles, and the Prometheus text it renders."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edged.server.metrics import LATENCY_BUCKETS_US, Stats, prometheus_text, serve_metrics


def _families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _filled() -> Stats:
    st = Stats(queue_depth=lambda: 3)
    for us in (300, 400, 800, 900, 2000):
        st.observe("digits", "v1", latency_us=us, cpu_s=0.001)
    st.observe("digits", "v1", error="BAD_SHAPE")
    st.observe("digits", "v1", latency_us=12_000_000, error="DEADLINE_EXCEEDED")  # beyond the last bound
    st.throttled("digits", "v1")
    st.shed("digits", "v1")
    st.shed("digits", "v1")
    st.swapped("digits", "v2")
    st.rolled_back("digits", "v2")
    st.swapped('we"ird\\name\n', "3")
    return st


def test_snapshot_counts_and_is_json() -> None:
    snap = _filled().snapshot()
    json.dumps(snap)  # JSON-able
    assert snap["queue_depth"] == 3
    assert snap["latency_buckets_us"] == list(LATENCY_BUCKETS_US)
    by = {(m["model"], m["version"]): m for m in snap["models"]}
    v1 = by[("digits", "v1")]
    assert v1["requests"] == 7
    assert v1["errors"] == {"BAD_SHAPE": 1, "DEADLINE_EXCEEDED": 1}
    assert (v1["throttled"], v1["shed"], v1["swaps"], v1["rollbacks"]) == (1, 2, 0, 0)
    assert v1["cpu_seconds"] == pytest.approx(0.005)
    lat = v1["latency_us"]
    assert lat["count"] == 6 and lat["sum"] == 300 + 400 + 800 + 900 + 2000 + 12_000_000
    assert (lat["min"], lat["max"]) == (300, 12_000_000)
    assert sum(lat["buckets"]) == 6 and lat["buckets"][-1] == 1
    assert by[("digits", "v2")]["swaps"] == 1 and by[("digits", "v2")]["rollbacks"] == 1
    assert by[("digits", "v2")]["latency_us"]["p50"] is None


def test_percentiles_from_histogram() -> None:
    st = Stats(buckets_us=(100, 200, 300, 400))
    for us in range(1, 401):  # uniform 1..400
        st.observe("m", "1", latency_us=us)
    lat = st.snapshot()["models"][0]["latency_us"]
    assert lat["p50"] == pytest.approx(200, abs=1)
    assert lat["p95"] == pytest.approx(380, abs=1)
    assert lat["p99"] == pytest.approx(396, abs=1)


def test_percentiles_clamped_to_seen_values() -> None:
    st = Stats()
    for _ in range(10):
        st.observe("m", "1", latency_us=700)  # all in the (500, 1000] bucket
    lat = st.snapshot()["models"][0]["latency_us"]
    assert lat["p50"] == lat["p99"] == 700.0


def test_error_code_enum_accepted() -> None:
    from edged.errors import ErrorCode

    st = Stats()
    st.observe("m", "1", error=ErrorCode.THROTTLED)
    assert st.snapshot()["models"][0]["errors"] == {"THROTTLED": 1}


def test_bad_buckets_rejected() -> None:
    with pytest.raises(ValueError):
        Stats(buckets_us=(10, 5))
    with pytest.raises(ValueError):
        Stats(buckets_us=())


def test_prometheus_text_parses_and_matches() -> None:
    snap = _filled().snapshot()
    text = prometheus_text(snap)
    fams = _families(text)
    assert fams["edged_requests"].type == "counter"
    assert fams["edged_request_latency_seconds"].type == "histogram"
    assert fams["edged_queue_depth"].type == "gauge"
    for name in ("edged_requests", "edged_errors", "edged_throttled", "edged_shed", "edged_model_swaps",
                 "edged_model_rollbacks", "edged_inference_cpu_seconds", "edged_request_latency_seconds"):
        assert fams[name].documentation, name

    s = _samples(text)
    v1 = (("model", "digits"), ("version", "v1"))
    assert s[("edged_queue_depth", ())] == 3
    assert s[("edged_requests_total", v1)] == 7
    assert s[("edged_throttled_total", v1)] == 1
    assert s[("edged_shed_total", v1)] == 2
    assert s[("edged_errors_total", (("code", "BAD_SHAPE"), *v1))] == 1
    assert s[("edged_inference_cpu_seconds_total", v1)] == pytest.approx(0.005)
    assert s[("edged_model_rollbacks_total", (("model", "digits"), ("version", "v2")))] == 1
    # The escaped label survives a round trip.
    assert s[("edged_model_swaps_total", (("model", 'we"ird\\name\n'), ("version", "3")))] == 1

    hist = "edged_request_latency_seconds"
    assert s[(f"{hist}_count", v1)] == 6
    assert s[(f"{hist}_sum", v1)] == pytest.approx((300 + 400 + 800 + 900 + 2000 + 12_000_000) / 1e6)
    assert s[(f"{hist}_bucket", (("le", "0.0005"), *v1))] == 2
    assert s[(f"{hist}_bucket", (("le", "0.001"), *v1))] == 4
    assert s[(f"{hist}_bucket", (("le", "0.0025"), *v1))] == 5
    assert s[(f"{hist}_bucket", (("le", "10.0"), *v1))] == 5
    assert s[(f"{hist}_bucket", (("le", "+Inf"), *v1))] == 6
    # Buckets are cumulative and monotonic.
    les = [(float(dict(k[1])["le"]), v) for k, v in s.items() if k[0] == f"{hist}_bucket" and dict(k[1])["version"] == "v1"]
    values = [v for _, v in sorted(les)]
    assert values == sorted(values)


def test_exposition_lines_are_exact() -> None:
    st = Stats(buckets_us=(1000,))
    st.observe("m", "1", latency_us=500)
    text = prometheus_text(st.snapshot())
    assert text.endswith("\n")
    lines = text.splitlines()
    assert "# HELP edged_requests_total Requests admitted for a model version (success or error)." in lines
    assert "# TYPE edged_requests_total counter" in lines
    assert 'edged_requests_total{model="m",version="1"} 1' in lines
    assert 'edged_request_latency_seconds_bucket{model="m",version="1",le="0.001"} 1' in lines
    assert 'edged_request_latency_seconds_bucket{model="m",version="1",le="+Inf"} 1' in lines
    assert 'edged_request_latency_seconds_sum{model="m",version="1"} 0.0005' in lines
    assert 'edged_request_latency_seconds_count{model="m",version="1"} 1' in lines


def test_empty_and_legacy_snapshots_render() -> None:
    assert "edged_queue_depth 0" in prometheus_text(Stats().snapshot())
    # A snapshot without a histogram (older daemon) still renders its counters.
    legacy = {"queue_depth": 1, "models": [{"model": "m", "version": "1", "requests": 4, "errors": {},
                                             "latency_us": {"p50": 1.0}, "cpu_seconds": 0.5}]}
    s = _samples(prometheus_text(legacy))
    assert s[("edged_requests_total", (("model", "m"), ("version", "1")))] == 4


def test_thread_safety() -> None:
    st = Stats()

    def work() -> None:
        for i in range(2000):
            st.observe("m", "1", latency_us=i, cpu_s=0.0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    m = st.snapshot()["models"][0]
    assert m["requests"] == 16000 and m["latency_us"]["count"] == 16000


def test_forget() -> None:
    st = _filled()
    st.forget("digits", "v2")
    assert {(m["model"], m["version"]) for m in st.snapshot()["models"]} >= {("digits", "v1")}
    assert ("digits", "v2") not in {(m["model"], m["version"]) for m in st.snapshot()["models"]}


def test_http_endpoint() -> None:
    st = _filled()
    srv = serve_metrics("127.0.0.1", 0, lambda: prometheus_text(st.snapshot()))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = resp.read().decode()
        assert _samples(body)[("edged_queue_depth", ())] == 3
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/nope", timeout=5)
        assert exc.value.code == 404
    finally:
        srv.close()
    assert not any(t.name == "edged-metrics" and t.is_alive() for t in threading.enumerate())


def test_http_endpoint_render_failure_is_500() -> None:
    def boom() -> str:
        raise RuntimeError("no")

    srv = serve_metrics("127.0.0.1", 0, boom)
    try:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5)
        assert exc.value.code == 500
    finally:
        srv.close()
