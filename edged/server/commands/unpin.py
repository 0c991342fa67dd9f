"""unpin – let auto-activation manage the model again (control endpoint).

Request: ``{"op": "unpin", "model"?: NAME}``.  Reply: ``{"model", "pinned": null}``;
the repository is rescanned at once.

CLI: ``edged ctl unpin [--model N]``.
"""

from __future__ import annotations

from typing import Any

from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames, optional_str

NAME = "unpin"
ENDPOINTS = frozenset({"control"})
#: Refused with ``SHUTTING_DOWN`` once the daemon drains (see dispatch).
CHANGES_VERSIONS = True


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    optional_str(header, "model")
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    slot = daemon.models.unpin(req.header.get("model"))
    daemon.models.scan()
    return {"model": slot.name, "pinned": None}
