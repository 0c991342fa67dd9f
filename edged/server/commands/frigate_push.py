"""frigate_push – a model file pushed by Frigate (Frigate endpoint only).

Frigate sends ``{"model_data": true, "model_name": F}`` and the model file's
bytes when the hand-shake said the model is not available.  With
``frigate.accept_pushed_models = true`` the bytes become the next version of
the model that answers Frigate, through the normal path (``pack``, validation
in a child, contract check, probation, rollback); otherwise, and on any
refusal, the serving version is untouched.

Reply (one JSON frame, once the swap is decided): ``{"model_saved": bool,
"model_loaded": bool}``.

CLI: none (docs/frigate.md).
"""

from __future__ import annotations

from typing import Any

from edged.errors import RequestError
from edged.server.api import DaemonAPI, Request

NAME = "frigate_push"
ENDPOINTS = frozenset({"frigate"})
CHANGES_VERSIONS = True  # refused while the daemon drains, like swap


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    if len(frames) != 1 or not len(frames[0]):
        raise RequestError(f"model_data takes one frame with the model file, got {len(frames)}")


def execute(daemon: DaemonAPI, req: Request) -> None:
    daemon.frigate.push(req)
    return None
