"""Object-detection post-processing into Frigate's ``(20, 6)`` detection array.

Pure NumPy, no ZeroMQ: the Frigate endpoint (``edged/server/frigate.py``) calls
it on a worker thread with a model's outputs, and tests and the bench call it
in-process on the same outputs.

Frigate reads one row per detection, ``[class_id, score, y_min, x_min, y_max,
x_max]`` with the corners normalised to 0..1, rows sorted by score, zero rows
after the last detection, at most :data:`MAX_DETECTIONS` rows.

Two model layouts are understood (``model_type`` as Frigate names it):

* ``ssd``: the four outputs of TFLite's ``TFLite_Detection_PostProcess`` op,
  in Frigate's order (boxes ``[1, N, 4]``, classes ``[1, N]``, scores ``[1, N]``,
  count ``[1]``), read exactly as Frigate's CPU and Edge TPU detectors read them:
  rows in model order until the first score below ``min_score``, at most 20;
* ``yolo-generic``: one ``[1, 4 + C, N]`` output (or its transpose ``[1, N, 4 + C]``)
  of centre-x, centre-y, width, height in input pixels followed by ``C`` class
  scores; decoded, filtered by ``min_score``, class-wise non-maximum suppression
  (IoU :data:`NMS_IOU`, Frigate's threshold), normalised by the input size.

Anything else raises :class:`LayoutError`, which the endpoint logs once and
answers with no detections.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_DETECTIONS = 20
#: IoU above which a lower-scored box of the same class is suppressed (Frigate's nms_threshold).
NMS_IOU = 0.4
#: Candidates kept (best scores first) before NMS, so a flood of boxes costs a bounded time.
MAX_NMS_CANDIDATES = 1000

#: Frigate's ``model_type`` spellings -> the adapter.  Frigate's zmq plugin sends the
#: enum member's *name* (``yologeneric``), its docs and config the value (``yolo-generic``).
MODEL_TYPES = {"ssd": "ssd", "yolo-generic": "yolo-generic", "yologeneric": "yolo-generic"}


class LayoutError(ValueError):
    """The model's outputs do not have the layout its ``model_type`` needs."""


def no_detections() -> np.ndarray:
    """The reply Frigate reads as "nothing detected" (it also uses it after a timeout)."""
    return np.zeros((MAX_DETECTIONS, 6), np.float32)


def canonical_model_type(name: object) -> str | None:
    """``"ssd"`` / ``"yolo-generic"`` for a supported spelling, else None."""
    return MODEL_TYPES.get(name) if isinstance(name, str) else None


def dequantize(array: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Real values of a (possibly quantized) output as float32."""
    if array.dtype.kind in "iu" and scale:
        return ((array.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
    return array.astype(np.float32, copy=False)


def check_layout(model_type: str, shapes: Sequence[Sequence[int]]) -> None:
    """Raise :class:`LayoutError` naming the problem unless ``shapes`` fit ``model_type``."""
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if model_type == "ssd":
        ok = (len(shapes) == 4 and len(shapes[0]) == 3 and shapes[0][0] == 1 and shapes[0][2] == 4
              and shapes[1] == shapes[2] == (1, shapes[0][1]) and int(np.prod(shapes[3])) == 1)
        if not ok:
            raise LayoutError(f"ssd needs outputs boxes [1, N, 4], classes [1, N], scores [1, N], count [1] "
                              f"(TFLite_Detection_PostProcess), the model has {[list(s) for s in shapes]}")
    elif model_type == "yolo-generic":
        if len(shapes) != 1 or len(shapes[0]) != 3 or shapes[0][0] != 1 or max(shapes[0][1:]) < 5 \
                or min(shapes[0][1:]) < 5:
            raise LayoutError(f"yolo-generic needs one output [1, 4 + classes, N] or [1, N, 4 + classes], "
                              f"the model has {[list(s) for s in shapes]}")
    else:
        raise LayoutError(f"unsupported model_type {model_type!r} (supported: ssd, yolo-generic)")


def ssd(outputs: Sequence[np.ndarray], min_score: float) -> np.ndarray:
    """Frigate's rule for ``TFLite_Detection_PostProcess`` outputs (see the module docstring).

    A NaN score ends the list like a low one (Frigate's ``score < 0.4`` would keep it).
    """
    check_layout("ssd", [o.shape for o in outputs])
    boxes, classes, scores = outputs[0][0], outputs[1][0], outputs[2][0]
    count = float(np.asarray(outputs[3]).reshape(-1)[0])
    count = int(min(max(count, 0), len(scores))) if np.isfinite(count) else 0
    result = no_detections()
    for i in range(min(count, MAX_DETECTIONS)):
        score = float(scores[i])
        if not score >= min_score:
            break
        result[i] = (classes[i], score, *boxes[i])
    return result


def yolo_generic(outputs: Sequence[np.ndarray], width: int, height: int, min_score: float,
                 iou: float = NMS_IOU) -> np.ndarray:
    """Decode one YOLO output, class-wise NMS, normalise to 0..1 (see the module docstring)."""
    check_layout("yolo-generic", [o.shape for o in outputs])
    pred = np.asarray(outputs[0][0], np.float32)
    if pred.shape[0] < pred.shape[1]:  # [4 + C, N] -> one row per candidate (Frigate's test)
        pred = pred.T
    class_scores = pred[:, 4:]
    class_ids = np.argmax(class_scores, axis=1)
    scores = class_scores[np.arange(len(pred)), class_ids]
    keep = np.isfinite(scores) & (scores >= min_score) & np.all(np.isfinite(pred[:, :4]), axis=1)
    pred, scores, class_ids = pred[keep], scores[keep], class_ids[keep]
    order = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
    pred, scores, class_ids = pred[order], scores[order], class_ids[order]
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    picked = _nms_by_class(xyxy, class_ids, iou)[:MAX_DETECTIONS]
    result = no_detections()
    for row, i in enumerate(picked):
        x0, y0, x1, y1 = xyxy[i]
        result[row] = (class_ids[i], scores[i], y0 / height, x0 / width, y1 / height, x1 / width)
    result[:, 2:] = np.clip(result[:, 2:], 0.0, 1.0)
    return result


def _nms_by_class(xyxy: np.ndarray, class_ids: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS within each class; ``xyxy`` is sorted by score, so is the result."""
    if not len(xyxy):
        return []
    # Shift each class to its own region so boxes of different classes never overlap.
    span = float(np.max(np.abs(xyxy))) * 2 + 1
    boxes = xyxy + (class_ids.astype(np.float32) * span)[:, None]
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    alive = np.ones(len(boxes), bool)
    picked: list[int] = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        picked.append(i)
        if len(picked) == MAX_DETECTIONS:
            break
        rest = np.nonzero(alive[i + 1:])[0] + i + 1
        if not len(rest):
            break
        ix0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        iy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        ix1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        iy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(ix1 - ix0, 0) * np.maximum(iy1 - iy0, 0)
        union = area[i] + area[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        alive[rest[overlap > iou]] = False
    return picked


def postprocess(model_type: str, outputs: Sequence[np.ndarray], *, min_score: float, width: int,
                height: int) -> np.ndarray:
    """Frigate's ``(20, 6)`` array for ``outputs`` of a ``model_type`` model.

    ``outputs`` must already be real values (see :func:`dequantize`); ``width`` and
    ``height`` are the model's input size (YOLO boxes are in input pixels).
    Raises :class:`LayoutError` for an unsupported type or a mismatched layout.
    """
    kind = canonical_model_type(model_type)
    if kind == "ssd":
        return ssd(outputs, min_score)
    if kind == "yolo-generic":
        return yolo_generic(outputs, width, height, min_score)
    raise LayoutError(f"unsupported model_type {model_type!r} (supported: ssd, yolo-generic)")
