"""Per-version health signals and live accuracy from application feedback.

Workers record every finished predict here (through the model manager); an
application that later learns the truth sends ``feedback`` naming the reply's
``request_id``.  For each served version edged keeps, in bounded memory:

* a window of the last ``window`` predictions (request id -> top-1 index, its
  probability), so feedback can be matched; older ids have *expired*;
* the outcomes of the last ``window`` requests (ok, non-finite output, latency,
  low confidence) for the error rate, non-finite rate, p95 latency and the share
  of low-confidence answers;
* the verdicts of the last ``window`` feedback reports, for live accuracy.

Nothing here knows of ZeroMQ or the daemon; the clock is not needed because
every window is counted in requests, not seconds (a rarely used model keeps its
evidence instead of losing it to time).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Any

import numpy as np

from edged.config import HealthConfig
from edged.errors import ErrorCode, NotFoundError, RequestError

#: How many versions of one model keep their signals (the serving one, the previous one, a few more).
VERSIONS_KEPT = 4


class VersionHealth:
    """The signals of one (model, version); every method is called under the book's lock."""

    def __init__(self, window: int, labels: list[str] | None = None) -> None:
        self.window = window
        self.labels = labels or []
        self.predictions: OrderedDict[str, tuple[int, float | None]] = OrderedDict()
        self.outcomes: deque[tuple[bool, bool, bool]] = deque(maxlen=window)  # ok, nonfinite, low confidence
        self.latencies_us: deque[int] = deque(maxlen=window)
        self.verdicts: deque[bool] = deque(maxlen=window)
        self.requests = 0
        self.feedback_total = 0

    def record(self, ok: bool, nonfinite: bool, latency_us: int | None, request_id: str | None,
               top1: tuple[int, float | None] | None, low_confidence: float) -> None:
        self.requests += 1
        low = bool(top1 is not None and top1[1] is not None and top1[1] < low_confidence)
        self.outcomes.append((ok, nonfinite, low))
        if latency_us is not None:
            self.latencies_us.append(int(latency_us))
        if request_id is not None and top1 is not None:
            self.predictions[request_id] = top1
            while len(self.predictions) > self.window:
                self.predictions.popitem(last=False)

    def snapshot(self, limits: HealthConfig) -> dict[str, Any]:
        n = len(self.outcomes)
        errors = sum(1 for ok, _, _ in self.outcomes if not ok)
        nonfinite = sum(1 for _, nf, _ in self.outcomes if nf)
        low = sum(1 for _, _, lo in self.outcomes if lo)
        p95 = float(np.percentile(np.fromiter(self.latencies_us, dtype=np.int64), 95)) / 1000 if self.latencies_us else None
        accuracy = sum(self.verdicts) / len(self.verdicts) if self.verdicts else None
        return {
            "requests": self.requests, "window": n,
            "error_rate": errors / n if n else 0.0,
            "nonfinite_rate": nonfinite / n if n else 0.0,
            "p95_ms": None if p95 is None else round(p95, 3),
            "low_confidence_share": low / n if n else 0.0,
            "feedback": len(self.verdicts), "feedback_total": self.feedback_total,
            "accuracy": None if accuracy is None else round(accuracy, 4),
        }


def top1(scores: np.ndarray | None, scale: float = 0.0, zero_point: int = 0) -> tuple[int, float | None] | None:
    """(index, probability) of a classifier's flat scores; probability only if they are one.

    Scores that are not a probability distribution (logits, sigmoid outputs that do
    not sum to 1) keep their index but no confidence: "low confidence" is only
    defined for probabilities.  Integer scores with a ``scale`` are quantized: only
    the three figures needed are dequantized, ``(q - zero_point) * scale``, not
    every score (this runs after every request).
    """
    if scores is None or scores.size < 2:
        return None
    quantized = bool(scale) and scores.dtype.kind in "iu"
    if quantized and scale < 0:  # the order reverses: dequantize them all
        return top1((scores.astype(np.float64) - zero_point) * scale)
    # The ufuncs' own reduce, not ndarray.sum()/.min(): those go through numpy's Python wrappers.
    i = int(scores.argmax())
    if quantized:
        total = (float(np.add.reduce(scores, dtype=np.int64)) - scores.size * zero_point) * scale
    else:
        total = float(np.add.reduce(scores, dtype=np.float64))
    if not 0.98 <= total <= 1.02:
        return i, None
    lowest, value = float(np.minimum.reduce(scores)), float(scores[i])
    if quantized:
        lowest, value = (lowest - zero_point) * scale, (value - zero_point) * scale
    return i, (value if lowest >= 0.0 else None)


def _label_index(labels: list[str], label: str | int) -> int:
    """The class index of ``label`` (its text in labels.txt, or an index); RequestError otherwise."""
    if isinstance(label, bool):
        raise RequestError("'label' must be a label text or a class index, not a boolean")
    if isinstance(label, int):
        if label < 0 or (labels and label >= len(labels)):
            raise RequestError(f"label index {label} out of range 0..{max(len(labels) - 1, 0)}")
        return label
    if label in labels:
        return labels.index(label)
    if not labels and label.isdigit():
        return int(label)
    shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
    raise RequestError(f"unknown label {label!r}" + (f" (labels: {shown})" if labels else " (the model has no labels; "
                                                                                         "send a class index)"))


class HealthBook:
    """Thread-safe signals for every (model, version); bounded in memory."""

    def __init__(self, limits: HealthConfig | None = None) -> None:
        self.limits = limits or HealthConfig()
        self._lock = threading.Lock()
        self._versions: dict[str, OrderedDict[str, VersionHealth]] = {}

    def _get(self, model: str, version: str, labels: list[str] | None = None) -> VersionHealth:
        versions = self._versions.setdefault(model, OrderedDict())
        vh = versions.get(version)
        if vh is None:
            vh = versions[version] = VersionHealth(self.limits.window, labels)
            while len(versions) > VERSIONS_KEPT:
                versions.popitem(last=False)
        return vh

    def record(self, model: str, version: str, *, ok: bool, nonfinite: bool = False, latency_us: int | None = None,
               request_id: str | None = None, top1: tuple[int, float | None] | None = None,
               labels: list[str] | None = None) -> None:
        with self._lock:
            self._get(model, version, labels).record(ok, nonfinite, latency_us, request_id, top1, self.limits.low_confidence)

    def feedback(self, model: str | None, request_id: str, *, label: str | int | None = None,
                 correct: bool | None = None) -> dict[str, Any]:
        """Match feedback to a recent prediction; returns what was recorded.

        ``label`` is the true class, as its label text or its index; ``correct``
        says directly whether the prediction was right.  Raises
        :class:`RequestError` for both or neither, or a label the version does not
        know, and :class:`NotFoundError` (``UNKNOWN_REQUEST``) when no version of
        the model (or of any model, when ``model`` is None) remembers
        ``request_id``: it was never a predict reply of this daemon, it was
        reported already, or it is older than the window.
        """
        if (label is None) == (correct is None):
            raise RequestError("feedback needs exactly one of 'label' or 'correct'")
        with self._lock:
            models = [model] if model is not None else list(self._versions)
            for name in models:
                for version, vh in reversed(self._versions.get(name, {}).items()):
                    guess = vh.predictions.get(request_id)
                    if guess is None:
                        continue
                    verdict = bool(correct) if correct is not None else guess[0] == _label_index(vh.labels, label)
                    del vh.predictions[request_id]  # one report per prediction
                    vh.verdicts.append(verdict)
                    vh.feedback_total += 1
                    return {"model": name, "version": version, "predicted": guess[0], "correct": verdict}
        raise NotFoundError(f"no recent prediction has request_id {request_id!r}: unknown, already reported, or "
                            f"older than the last {self.limits.window} predictions of its version",
                            code=ErrorCode.UNKNOWN_REQUEST)

    def snapshot(self, model: str, version: str) -> dict[str, Any] | None:
        with self._lock:
            vh = self._versions.get(model, {}).get(version)
            return None if vh is None else vh.snapshot(self.limits)

    def snapshot_all(self) -> dict[str, dict[str, dict[str, Any]]]:
        with self._lock:
            return {m: {v: vh.snapshot(self.limits) for v, vh in versions.items()}
                    for m, versions in self._versions.items()}

    def accuracy(self, model: str, version: str) -> tuple[float | None, int]:
        """Live accuracy of a version and the number of feedback reports behind it."""
        with self._lock:
            vh = self._versions.get(model, {}).get(version)
            if vh is None or not vh.verdicts:
                return None, 0
            return sum(vh.verdicts) / len(vh.verdicts), len(vh.verdicts)

    def unhealthy_reasons(self, model: str, version: str) -> list[str]:
        """Why a version looks unhealthy over its window (empty: healthy, or not enough evidence).

        Used by the adaptive update strategy: any signal past its threshold counts.
        """
        snap = self.snapshot(model, version)
        lim = self.limits
        if snap is None or snap["window"] < lim.min_samples:
            return []
        why = []
        if snap["error_rate"] > lim.max_error_rate:
            why.append(f"error rate {snap['error_rate']:.1%} over {lim.max_error_rate:.1%}")
        if snap["low_confidence_share"] > lim.max_low_confidence_share:
            why.append(f"low-confidence share {snap['low_confidence_share']:.1%} over "
                       f"{lim.max_low_confidence_share:.1%} (top-1 < {lim.low_confidence})")
        if lim.min_accuracy > 0 and snap["accuracy"] is not None and snap["feedback"] >= lim.min_samples \
                and snap["accuracy"] < lim.min_accuracy:
            why.append(f"live accuracy {snap['accuracy']:.1%} under {lim.min_accuracy:.1%} "
                       f"({snap['feedback']} reports)")
        return why

    def forget(self, model: str, version: str | None = None) -> None:
        with self._lock:
            if version is None:
                self._versions.pop(model, None)
            else:
                self._versions.get(model, {}).pop(version, None)
