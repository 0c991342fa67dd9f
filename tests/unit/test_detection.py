"""edged.runtime.detection: model outputs -> Frigate's (20, 6) array."""

from __future__ import annotations

import numpy as np
import pytest

from edged.runtime import detection
from edged.runtime.detection import LayoutError
from tests.e2e.frigate_client import frigate_tflite_detect_raw


def ssd_outputs(scores: list[float], n: int = 25) -> list[np.ndarray]:
    rng = np.random.default_rng(len(scores))
    boxes = np.zeros((1, n, 4), np.float32)
    boxes[0, :len(scores)] = np.sort(rng.random((len(scores), 4)).astype(np.float32), axis=1)
    classes = np.zeros((1, n), np.float32)
    classes[0, :len(scores)] = rng.integers(0, 3, len(scores))
    s = np.zeros((1, n), np.float32)
    s[0, :len(scores)] = scores
    return [boxes, classes, s, np.asarray([len(scores)], np.float32)]


@pytest.mark.parametrize("scores", [[], [0.9], [0.9, 0.5, 0.41, 0.4, 0.39, 0.2], [0.99] * 25, [0.3, 0.95]])
def test_ssd_equals_frigates_rule(scores):
    outputs = ssd_outputs(scores)
    np.testing.assert_array_equal(detection.ssd(outputs, 0.4), frigate_tflite_detect_raw(outputs))


def test_ssd_min_score_and_nan_ends_the_list():
    outputs = ssd_outputs([0.9, 0.7, 0.6])
    assert np.count_nonzero(detection.ssd(outputs, 0.65)[:, 1]) == 2
    outputs[2][0, 1] = np.nan
    got = detection.ssd(outputs, 0.4)
    assert got[0, 1] == pytest.approx(0.9) and not got[1:].any()


def test_ssd_count_is_bounded_by_the_rows():
    outputs = ssd_outputs([0.9, 0.8])
    outputs[3][0] = 1e9
    assert detection.ssd(outputs, 0.4).shape == (20, 6)
    outputs[3][0] = np.nan
    assert not detection.ssd(outputs, 0.4).any()


@pytest.mark.parametrize("shapes", [
    [(1, 10, 4), (1, 10), (1, 10)],
    [(1, 10, 4), (1, 10), (1, 11), (1,)],
    [(1, 10, 5), (1, 10), (1, 10), (1,)],
])
def test_ssd_layout_mismatch_is_named(shapes):
    with pytest.raises(LayoutError, match="ssd needs outputs boxes"):
        detection.ssd([np.zeros(s, np.float32) for s in shapes], 0.4)


def yolo_output(rows: list[tuple[float, float, float, float, int, float]], classes: int = 3,
                n: int = 50) -> np.ndarray:
    """[1, 4 + C, N] from (cx, cy, w, h, class, score) rows; other candidates score 0."""
    out = np.zeros((1, 4 + classes, n), np.float32)
    for i, (cx, cy, w, h, c, s) in enumerate(rows):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + c, i] = s
    return out


def test_yolo_decodes_normalises_and_sorts():
    out = yolo_output([(32, 16, 16, 8, 1, 0.6), (100, 50, 20, 20, 2, 0.9)])
    got = detection.yolo_generic([out], width=128, height=64, min_score=0.4)
    np.testing.assert_allclose(got[0], [2, 0.9, 40 / 64, 90 / 128, 60 / 64, 110 / 128], rtol=1e-6)
    np.testing.assert_allclose(got[1], [1, 0.6, 12 / 64, 24 / 128, 20 / 64, 40 / 128], rtol=1e-6)
    assert not got[2:].any()


def test_yolo_transposed_layout_gives_the_same():
    out = yolo_output([(32, 16, 16, 8, 1, 0.6), (100, 50, 20, 20, 2, 0.9)])
    a = detection.yolo_generic([out], 128, 64, 0.4)
    b = detection.yolo_generic([out.transpose(0, 2, 1).copy()], 128, 64, 0.4)
    np.testing.assert_array_equal(a, b)


def test_yolo_nms_is_class_wise():
    same = yolo_output([(50, 50, 20, 20, 0, 0.9), (52, 50, 20, 20, 0, 0.8), (51, 50, 20, 20, 1, 0.7)])
    got = detection.yolo_generic([same], 100, 100, 0.4)
    assert [int(c) for c in got[:, 0][got[:, 1] > 0]] == [0, 1]  # the 0.8 box of class 0 is suppressed
    apart = yolo_output([(20, 20, 10, 10, 0, 0.9), (80, 80, 10, 10, 0, 0.8)])
    assert np.count_nonzero(detection.yolo_generic([apart], 100, 100, 0.4)[:, 1]) == 2


def test_yolo_min_score_cap_and_clip():
    rows = [(5 + 10 * i, 50, 4, 4, 0, 0.5 + i / 100) for i in range(30)]
    rows.append((0, 0, 40, 40, 2, 0.3))  # below min_score
    got = detection.yolo_generic([yolo_output(rows, n=40)], 300, 100, 0.4)
    assert np.all(got[:, 1] >= 0.5) and list(got[:, 1]) == sorted(got[:, 1], reverse=True)
    edge = detection.yolo_generic([yolo_output([(0, 0, 40, 40, 2, 0.9)])], 100, 100, 0.4)
    np.testing.assert_allclose(edge[0, 2:], [0.0, 0.0, 0.2, 0.2], rtol=1e-6)


def test_yolo_nonfinite_rows_are_dropped():
    out = yolo_output([(50, 50, 20, 20, 0, 0.9), (10, 10, 5, 5, 1, 0.8)])
    out[0, 0, 0] = np.inf
    got = detection.yolo_generic([out], 100, 100, 0.4)
    assert got[0, 0] == 1 and not got[1:].any()


def test_unknown_model_type_and_spellings():
    assert detection.canonical_model_type("yologeneric") == "yolo-generic"  # what Frigate's plugin sends
    assert detection.canonical_model_type("yolox") is None
    with pytest.raises(LayoutError, match="unsupported model_type 'yolox'"):
        detection.postprocess("yolox", [], min_score=0.4, width=1, height=1)


def test_dequantize():
    q = np.asarray([0, 128, 255], np.uint8)
    np.testing.assert_allclose(detection.dequantize(q, 0.5, 128), [-64, 0, 63.5])
    f = np.asarray([1.5], np.float32)
    assert detection.dequantize(f, 0.0, 0) is f
