"""frigate_model – Frigate's model hand-shake (Frigate endpoint only).

Frigate sends one frame ``{"model_request": true, "model_name": "<file name of
its model.path>"}`` before its first frame and after every timeout, and sends
no frame until the answer says ``model_available`` and ``model_loaded``.

Reply (one JSON frame): ``{"model_available": bool, "model_loaded": bool}``,
both true when the edged model that answers Frigate (``frigate.model``, or the
only model served) is serving.  Frigate's file name is not matched against
edged's model names: the mapping is logged once per name.

CLI: none (``edged serve --frigate-endpoint EP``; docs/frigate.md).
"""

from __future__ import annotations

from typing import Any

from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames

NAME = "frigate_model"
ENDPOINTS = frozenset({"frigate"})


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    return {"frigate": daemon.frigate.model_status(req.header.get("model_name"))}
