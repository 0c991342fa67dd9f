"""Per-version health signals, feedback matching and the live-accuracy probation rule."""

from __future__ import annotations

import numpy as np
import pytest

from edged.config import ConfigError, HealthConfig, ModelPolicy, ProbationConfig, load
from edged.errors import ErrorCode, NotFoundError, RequestError
from edged.repository.health import VERSIONS_KEPT, HealthBook, top1
from edged.repository.manager import ProbationTracker
from edged.server.metrics import prometheus_text

LABELS = [str(i) for i in range(10)]


def book(**limits) -> HealthBook:
    return HealthBook(HealthConfig(**limits))


def predict(b: HealthBook, rid: str, index: int, prob: float = 0.9, version: str = "v1", ok: bool = True) -> None:
    b.record("m", version, ok=ok, latency_us=100, request_id=rid, top1=(index, prob), labels=LABELS)


def test_top1_gives_a_probability_only_for_distributions():
    assert top1(np.array([0.1, 0.7, 0.2])) == (1, pytest.approx(0.7))
    assert top1(np.array([2.0, -1.0, 5.0])) == (2, None)  # logits: an index, no confidence
    assert top1(np.array([0.9])) is None  # one score is not a classifier
    assert top1(None) is None


def test_top1_of_quantized_scores_dequantizes_only_what_it_needs_and_agrees_with_the_full_dequantization():
    probs = np.array([10, 200, 45], np.uint8)  # sums to 255: a distribution at scale 1/255
    assert top1(probs, 1 / 255, 0) == (1, pytest.approx(200 / 255))
    assert top1(np.array([138, 128, 128], np.uint8), 0.5, 128) == (0, None)  # scores 5, 0, 0: no distribution
    assert top1(np.array([1, 3], np.int8), -0.25, 0) == (0, None)  # a negative scale reverses the order
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.integers(0, 256, 1001).astype(np.uint8)
        zero_point = int(rng.choice([0, 0, 7]))  # with 0 the scores are a distribution, with 7 they are not
        scale = 1.0 / float(q.astype(np.int64).sum())
        full = top1((q.astype(np.float64) - zero_point) * scale)
        assert top1(q, scale, zero_point) == (full[0], pytest.approx(full[1]) if full[1] is not None else None)


def test_feedback_matches_by_label_text_index_or_verdict():
    b = book()
    predict(b, "a", 7)
    predict(b, "b", 7)
    predict(b, "c", 3)
    assert b.feedback("m", "a", label="7")["correct"] is True
    assert b.feedback(None, "b", label=2)["correct"] is False
    assert b.feedback("m", "c", correct=True) == {"model": "m", "version": "v1", "predicted": 3, "correct": True}
    assert b.accuracy("m", "v1") == (pytest.approx(2 / 3), 3)


def test_feedback_errors_are_typed_and_name_the_problem():
    b = book()
    predict(b, "a", 7)
    with pytest.raises(RequestError, match="exactly one"):
        b.feedback("m", "a", label="7", correct=True)
    with pytest.raises(RequestError, match="unknown label 'cat'.*labels: 0, 1"):
        b.feedback("m", "a", label="cat")
    with pytest.raises(RequestError, match="out of range"):
        b.feedback("m", "a", label=10)
    b.feedback("m", "a", label="7")
    with pytest.raises(NotFoundError) as err:  # one report per prediction
        b.feedback("m", "a", label="7")
    assert err.value.code is ErrorCode.UNKNOWN_REQUEST
    with pytest.raises(NotFoundError):
        b.feedback("m", "never-served", correct=True)


def test_memory_is_bounded_and_old_ids_expire():
    b = book(window=50)
    for i in range(500):
        predict(b, f"r{i}", i % 10)
    vh = b._versions["m"]["v1"]
    assert len(vh.predictions) == 50 and len(vh.outcomes) == 50 and len(vh.latencies_us) == 50
    with pytest.raises(NotFoundError, match="older than the last 50"):
        b.feedback("m", "r0", correct=True)
    assert b.feedback("m", "r499", correct=True)["correct"]
    for i in range(VERSIONS_KEPT + 3):
        predict(b, f"x{i}", 1, version=f"v{i + 2}")
    assert len(b._versions["m"]) == VERSIONS_KEPT


def test_signals_and_unhealthy_reasons():
    b = book(window=100, min_samples=20, max_error_rate=0.05, low_confidence=0.5, max_low_confidence_share=0.3,
             min_accuracy=0.8)
    for i in range(20):
        predict(b, f"r{i}", 1, prob=0.4 if i < 10 else 0.9)
    snap = b.snapshot("m", "v1")
    assert snap["low_confidence_share"] == 0.5 and snap["error_rate"] == 0.0 and snap["p95_ms"] == 0.1
    assert b.unhealthy_reasons("m", "v1") == ["low-confidence share 50.0% over 30.0% (top-1 < 0.5)"]
    for i in range(20):
        b.feedback("m", f"r{i}", correct=i < 10)
    reasons = b.unhealthy_reasons("m", "v1")
    assert any(r.startswith("live accuracy 50.0% under 80.0%") for r in reasons)
    for _ in range(5):
        predict(b, None, 1, ok=False)
    assert any(r.startswith("error rate") for r in b.unhealthy_reasons("m", "v1"))
    assert book().unhealthy_reasons("m", "v1") == []  # no evidence: not unhealthy


def test_prometheus_text_exports_health_gauges():
    b = book()
    predict(b, "a", 7, prob=0.3)
    b.feedback("m", "a", label="7")
    text = prometheus_text({"models": [], "health": b.snapshot_all()})
    assert 'edged_live_accuracy{model="m",version="v1"} 1' in text
    assert 'edged_window_low_confidence_share{model="m",version="v1"} 1' in text
    assert 'edged_feedback_total{model="m",version="v1"} 1' in text


def tracker(baseline_accuracy, **probation) -> ProbationTracker:
    return ProbationTracker("v2", started=0.0, policy=ModelPolicy(probation=ProbationConfig(**probation)),
                            baseline_p95_us=None, baseline_accuracy=baseline_accuracy)


def test_probation_rolls_back_on_an_accuracy_drop_past_min_feedback():
    t = tracker(0.98, min_feedback=20, max_accuracy_drop=0.05, requests=1000)
    assert t.verdict(0.0, (0.5, 19))[0] == "wait"  # too few reports to judge
    assert t.verdict(0.0, (0.94, 40))[0] == "wait"  # 4 points: within the limit
    verdict, why = t.verdict(0.0, (0.5, 20))
    assert verdict == "rollback" and "live accuracy 50.0% over 20 feedback reports" in why
    assert tracker(None, min_feedback=20).verdict(0.0, (0.0, 100))[0] == "wait"  # no baseline: no judgement


def test_config_bounds_name_the_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[health]\nlow_confidence = 1.5\n")
    with pytest.raises(ConfigError, match="health.low_confidence"):
        load(cfg)
    cfg.write_text("[repository.probation]\nmax_accuracy_drop = -0.1\n")
    with pytest.raises(ConfigError, match="max_accuracy_drop"):
        load(cfg)
    cfg.write_text("[health]\nwindow = 10000000\n")
    with pytest.raises(ConfigError, match="health.window"):
        load(cfg)
    cfg.write_text("[health]\nwindow = 50\nmin_accuracy = 0.9\n[repository.probation]\nmin_feedback = 5\n")
    c = load(cfg)
    assert c.health.window == 50 and c.repository.probation.min_feedback == 5
