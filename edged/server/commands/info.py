"""info – describe the serving model(s): version, runtime, delegate, input/output contract.

Request: ``{"op": "info", "model": NAME?}``; without ``model``, every model.
Reply: ``{"models": [{model, version, delegate, runtime, variant, inputs, outputs, ...}]}``.

CLI: ``edged info [--model NAME]``.
"""

from __future__ import annotations

from typing import Any

from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames, optional_str

NAME = "info"
ENDPOINTS = frozenset({"predict", "control"})


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    optional_str(header, "model")
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    name = req.header.get("model")
    if name is not None:
        return {"models": [daemon.models.get(name).describe()]}
    return {"models": [s.serving.describe() for s in daemon.models.slots.values() if s.serving is not None]}
