"""Parallelism by load with a real daemon: a lone request gets the solo interpreter, a power cap forbids it."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from edged.errors import DeadlineExceeded
from edged.testing import tflite_build as tb
from tests.e2e.repohelpers import publish
from tests.e2e.test_repository import DARK

pytestmark = [pytest.mark.e2e]


def test_a_lone_request_runs_solo_until_a_profile_caps_the_threads(daemon_factory, tmp_path):
    repo = tmp_path / "repo"
    publish(repo, "v1", tb.random_classifier(seed=1), tmp=tmp_path)
    # Explicit values, so the test does not depend on the cores of the machine running it.
    d = daemon_factory(repo, "--workers", "2", "--set", "runtime.solo_threads=2")
    r = d.cli("ctl", "status", "--json")
    assert r.returncode == 0, r.stderr
    par = json.loads(r.stdout)["parallelism"]
    assert (par["workers"], par["num_threads"], par["solo_threads"]) == (2, 1, 2)
    assert par["chosen"] == {"server.workers": "config", "runtime.solo_threads": "config"} and par["cores"] >= 1
    # One sentence (edged.protocol.describe_parallelism), in the start-up log and in ctl status.
    line = "2 workers x 1 thread(s); a request running alone gets 2 threads"
    assert f"parallelism {line}" in d.cli("ctl", "status").stdout
    assert f"parallelism: {line}" in d.log()
    with d.client() as c:
        # Sequential requests: each is alone in the daemon, so each runs on every thread.
        assert {c.predict(DARK).header["threads"] for _ in range(3)} == {2}
        # powersave caps num_threads at 1: at once, before any interpreter is rebuilt.
        assert d.cli("ctl", "power", "--profile", "powersave", "--for", "10m").returncode == 0
        assert c.predict(DARK).header["threads"] == 1
        assert d.cli("ctl", "power", "--auto").returncode == 0
        assert c.predict(DARK).header["threads"] == 2


def test_a_lone_request_on_a_quick_model_runs_on_the_main_loop_unless_turned_off(daemon_factory, tmp_path):
    repo = tmp_path / "repo"
    publish(repo, "v1", tb.random_classifier(seed=1), tmp=tmp_path)
    d = daemon_factory(repo, "--workers", "2", "--set", "runtime.solo_threads=2")
    with d.client() as c:
        first = c.predict(DARK)  # no invoke measured yet: a worker runs it
        rest = [c.predict(DARK) for _ in range(5)]
    # A few microseconds per invoke: every later lone request ran on the main loop,
    # solo, and gave the same answer as the worker did.
    par = json.loads(d.cli("ctl", "status", "--json").stdout)["parallelism"]
    assert (par["inline_max_ms"], par["inline_runs"]) == (20.0, 5)
    assert all(r.header["threads"] == 2 and (r.outputs[0] == first.outputs[0]).all() for r in rest)
    assert "on the main loop while its model's invoke() takes at most 20 ms (5 so far)" in d.cli("ctl", "status").stdout
    # An image's decoding time is the client's to choose: it always goes to a worker.
    buf = io.BytesIO()
    Image.new("L", (4096, 4096), 200).save(buf, format="PNG")
    with d.client() as c:
        assert c.predict_image(buf.getvalue()).header["threads"] == 2  # alone, on a worker
    assert json.loads(d.cli("ctl", "status", "--json").stdout)["parallelism"]["inline_runs"] == 5
    # Deadlines and feedback work the same on that path.
    with d.client() as c:
        with pytest.raises(DeadlineExceeded):
            c.predict(DARK, deadline_ms=0)
        assert c.feedback(c.predict(DARK), correct=True)["ok"]

    assert d.stop() == 0
    off = daemon_factory(repo, "--workers", "2", "--set", "runtime.solo_threads=2", "--set", "server.inline_max_ms=0")
    with off.client() as c:
        assert {c.predict(DARK).header["threads"] for _ in range(4)} == {2}  # still solo, on a worker
    assert json.loads(off.cli("ctl", "status", "--json").stdout)["parallelism"]["inline_runs"] == 0
