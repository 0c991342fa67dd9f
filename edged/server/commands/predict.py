"""predict – run one inference.

Request header::

    {"v": 1, "id": "42", "op": "predict",
     "model": "digits",                  # optional when one model is served
     "inputs": [{"name": "image", "dtype": "float32", "shape": [1, 8, 8, 1]}
                | {"name": "image", "encoding": "image"}],   # one per data frame
     "top_k": 3,                         # optional: labelled top-k of output 0
     "deadline_ms": 50,                  # optional: budget from receipt; expired = not computed
     "priority": "normal"}               # optional: low | normal | high

followed by one data frame per input.  Reply header adds ``model``,
``version``, ``delegate``, ``runtime``, ``profile``, ``timing`` {queue_us,
invoke_us, total_us}, ``outputs`` [{name, dtype, shape}] and, if asked,
``top_k`` [{index, label, score}]; one data frame per output follows.

CLI: ``edged predict [--model NAME] [--top K] FILE`` (FILE: .npy, .png, .jpg).
"""

from __future__ import annotations

from typing import Any

from edged.errors import RequestError
from edged.protocol import PRIORITIES
from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import optional_number, optional_str

NAME = "predict"
ENDPOINTS = frozenset({"predict"})
RUNS_MODEL = True  # refused while the daemon drains (dispatch)


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'inputs' must be a non-empty list of tensor descriptors")
    if len(inputs) != len(frames):
        raise RequestError(f"'inputs' describes {len(inputs)} tensor(s) but {len(frames)} data frame(s) follow")
    for i, meta in enumerate(inputs):
        if not isinstance(meta, dict):
            raise RequestError(f"inputs[{i}] must be an object")
        if meta.get("encoding") not in (None, "image"):
            raise RequestError(f"inputs[{i}].encoding must be 'image' or absent")
        if meta.get("name") is not None and not isinstance(meta["name"], str):
            raise RequestError(f"inputs[{i}].name must be a string")
    optional_str(header, "model")
    optional_number(header, "deadline_ms")
    top_k = header.get("top_k", 0)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= 1000:
        raise RequestError("'top_k' must be an integer 0..1000")
    if header.get("priority", "normal") not in PRIORITIES:
        raise RequestError(f"'priority' must be one of {', '.join(PRIORITIES)}")
    if not isinstance(header.get("wait", False), bool):  # "false" is a truthy string
        raise RequestError("'wait' must be true or false")


def execute(daemon: DaemonAPI, req: Request) -> None:
    daemon.submit_predict(req)
    return None
