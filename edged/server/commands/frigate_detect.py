"""frigate_detect – one frame from Frigate's zmq detector (Frigate endpoint only).

Request: a JSON frame ``{"shape": [1, 320, 320, 3], "dtype": "uint8",
"model_type": "ssd"}`` (``yolo-generic``, or ``yologeneric`` as Frigate's plugin
spells it, also supported) and the tensor's C-order bytes.  It runs as a predict
of the model that answers Frigate, with ``deadline_ms = frigate.budget_ms``.

Reply: one 480-byte frame, a float32 ``(20, 6)`` array of ``[class_id, score,
y_min, x_min, y_max, x_max]`` rows (edged/runtime/detection.py).  Any failure
(unknown model_type, shape or dtype mismatch, a message over
``server.max_message_bytes``, throttled, past the budget, the daemon stopping) is
answered with all zeros, which Frigate reads as no detections, and counted in
``frigate_dropped`` by reason.

CLI: none (docs/frigate.md).
"""

from __future__ import annotations

from typing import Any

from edged import protocol
from edged.errors import ErrorCode, RequestError
from edged.server.api import DaemonAPI, Request

NAME = "frigate_detect"
ENDPOINTS = frozenset({"frigate"})
RUNS_MODEL = True  # refused while the daemon drains, like a predict


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    if "_error" in header:
        raise RequestError(f"Frigate header unreadable: {header['_error']}")
    if len(frames) != 1:
        raise RequestError(f"a frame is a header and one tensor frame, got {len(frames)} data frame(s)")
    if not protocol.is_dtype_name(header.get("dtype")):
        raise RequestError(f"dtype {header.get('dtype')!r} not supported", code=ErrorCode.BAD_DTYPE)
    shape = header.get("shape")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**16 for d in shape):
        raise RequestError(f"shape {shape!r} is not a list of 1..8 positive ints", code=ErrorCode.BAD_SHAPE)


def execute(daemon: DaemonAPI, req: Request) -> None:
    daemon.frigate.detect(req)
    return None
