"""Application feedback against a real daemon: live accuracy, its probation rule, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edged.errors import NotFoundError
from edged.testing import tflite_build as tb
from tests.e2e.repohelpers import publish, state_of, versions, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.runtime]

INPUTS = [np.random.default_rng(i).uniform(0, 16, (1, 8, 8, 1)).astype(np.float32) for i in range(30)]


def config(tmp_path: Path) -> Path:
    p = tmp_path / "edged.toml"
    p.write_text("[repository]\nsettle_s = 0.2\nvalidation_timeout_s = 60\n"
                 "[repository.probation]\nseconds = 3600\nrequests = 1000000\n"
                 "min_feedback = 20\nmax_accuracy_drop = 0.05\n")
    return p


def test_feedback_drop_on_a_new_version_rolls_it_back(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    truth = []
    with d.client() as c:
        # The app's ground truth is what v1 answers: v1 is right every time.
        for x in INPUTS:
            r = c.predict(x)
            assert r.version == "v1" and r.request_id
            truth.append(int(np.argmax(r.outputs[0])))
            assert c.feedback(r, label=truth[-1])["correct"] is True
        assert c.stats()["stats"]["health"]["m"]["v1"]["accuracy"] == 1.0
        publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
        wait_until(lambda: c.predict(INPUTS[0]).version == "v2", "v2 to serve", daemon=d)
        agree = 0
        for x, label in zip(INPUTS, truth):
            r = c.predict(x)
            if r.version != "v2":
                break  # already rolled back
            agree += int(np.argmax(r.outputs[0])) == label
            c.feedback(r.request_id, label=label)
        assert agree < 0.9 * len(INPUTS), "the test needs v2 to disagree with v1"
        wait_until(lambda: c.predict(INPUTS[0]).version == "v1", "rollback to v1", daemon=d)
    v2 = state_of(d, "v2")
    assert v2["state"] == "bad" and "live accuracy" in v2["reason"], v2
    assert versions(d)["committed"] == "v1"


def test_feedback_errors_and_cli(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    with d.client() as c:
        with pytest.raises(NotFoundError, match="no recent prediction"):
            c.feedback("deadbeef-1", correct=True)
    out = d.cli("predict", "--endpoint", d.endpoint, "--json", str(tmp_path / "m-v1-golden.npy"))
    assert out.returncode == 0, out.stderr
    rid = json.loads(out.stdout)["request_id"]
    bad = d.cli("feedback", "--endpoint", d.endpoint, rid, "--label", "no-such-label")
    assert bad.returncode == 3 and "unknown label" in bad.stderr
    ok = d.cli("feedback", "--endpoint", d.endpoint, rid, "--correct", "--json")
    assert ok.returncode == 0, ok.stderr
    reply = json.loads(ok.stdout)
    assert (reply["model"], reply["version"], reply["correct"], reply["feedback"], reply["accuracy"]) == \
        ("m", "v1", True, 1, 1.0)
    again = d.cli("feedback", "--endpoint", d.endpoint, rid, "--wrong")
    assert again.returncode == 4 and "UNKNOWN_REQUEST" in again.stderr
    metrics = d.cli("ctl", "stats", "--control-endpoint", d.control_endpoint, "--json")
    assert json.loads(metrics.stdout)["health"]["m"]["v1"]["feedback_total"] == 1
