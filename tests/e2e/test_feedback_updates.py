"""Feedback meets remote updates: a version pulled from the signed registry and served is rolled
back by the live accuracy that applications report, and is not fetched again.

Real daemon, real ``edged registry``, real nginx (see tests/e2e/test_updates.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from edged.testing import tflite_build as tb
from tests.e2e.repohelpers import state_of, wait_until
from tests.e2e.test_updates import check, fleet, serving  # noqa: F401 - fleet is a fixture

pytestmark = pytest.mark.e2e

INPUTS = [np.random.default_rng(100 + i).uniform(0, 16, (1, 8, 8, 1)).astype(np.float32) for i in range(30)]
PROBATION = ("--set", "repository.probation.seconds=3600", "--set", "repository.probation.requests=1000000",
             "--set", "repository.probation.min_feedback=20", "--set", "repository.probation.max_accuracy_drop=0.05")


def test_a_worse_version_from_the_registry_is_rolled_back_by_feedback(fleet):  # noqa: F811
    d = fleet.device(*PROBATION)
    truth = []
    with d.client() as c:
        for x in INPUTS:  # the field's truth is what v1 says: v1 is always right
            r = c.predict(x)
            truth.append(int(np.argmax(r.outputs[0])))
            c.feedback(r, label=truth[-1])
        fleet.publish("v2", tb.random_classifier(seed=2))
        assert check(d)["installed"] == ["m/v2"]
        wait_until(lambda: serving(d) == "v2", "v2 serving", daemon=d)
        for x, label in zip(INPUTS, truth):
            r = c.predict(x)
            if r.version != "v2":
                break
            c.feedback(r, label=label)
        wait_until(lambda: serving(d) == "v1", "feedback rollback to v1", daemon=d)
    v2 = state_of(d, "v2")
    assert v2["state"] == "bad" and "live accuracy" in v2["reason"], v2
    downloads = len(fleet.nginx.target_requests())
    again = check(d)
    assert again["installed"] == [] and len(fleet.nginx.target_requests()) == downloads, \
        "a version rolled back by feedback was downloaded again"
