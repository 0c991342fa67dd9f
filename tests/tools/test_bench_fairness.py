"""scripts/bench_fairness.py refuses a result whose flooder was not flooding (no daemon needed)."""

from __future__ import annotations

import importlib.util
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_fairness.py"


@pytest.fixture(scope="module")
def bf() -> Any:
    spec = importlib.util.spec_from_file_location("bench_fairness", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_flood_with_fewer_answers_than_polite_requests_fails_the_run(bf: Any) -> None:
    start = {"sent": 500, "replies": {"ok": 100, "THROTTLED": 200}}
    stuck = {"sent": 520, "replies": {"ok": 110, "THROTTLED": 210}}
    with pytest.raises(SystemExit, match=r"got 10 predicts answered .* fewer than 150 .* not flooding"):
        bf.check_flood_rate(start, stuck, 150)
    errors_only = {"sent": 90_500, "replies": {"ok": 100, "THROTTLED": 200, "BAD_REQUEST": 90_000}}
    with pytest.raises(SystemExit, match="got 0 predicts answered"):
        bf.check_flood_rate(start, errors_only, 150)  # sent plenty, but loaded nothing


def test_a_real_flood_passes_with_its_window_counts(bf: Any) -> None:
    start = {"sent": 500, "replies": {"ok": 100, "THROTTLED": 200}}
    end = {"sent": 29_500, "replies": {"ok": 1_100, "THROTTLED": 28_200}}
    assert bf.check_flood_rate(start, end, 150) == {"sent": 29_000, "replies": {"ok": 1_000, "THROTTLED": 28_000},
                                                    "ok_per_polite_request": 6.67}


def test_the_flooder_reports_its_counts_when_asked(bf: Any, tmp_path: Path) -> None:
    # Nobody listens on the endpoint: the flooder sends its first `inflight` and gets no reply.
    args = {"endpoint": f"ipc://{tmp_path}/none.sock", "inflight": 5, "stop_at": time.monotonic() + 120}
    proc = bf.bench.spawn_role("flood", args, bf.bench.bench_env(), script=SCRIPT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    try:
        assert bf.flood_counts(proc, "in the test") == {"sent": 5, "replies": {}}
        assert bf.flood_counts(proc, "in the test") == {"sent": 5, "replies": {}}  # asked again: one line each
        proc.stdin.close()  # the parent gone: the flooder ends on its own
        assert proc.wait(30) == 0
        with pytest.raises(SystemExit, match=r"the flooder exited \(code 0\) after"):
            bf.flood_counts(proc, "after")
    finally:
        proc.kill()
        proc.wait(30)
        proc.stdin.close()
        proc.stdout.close()
