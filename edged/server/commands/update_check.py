"""update-check – check the registry now (control endpoint).

Request: ``{"op": "update-check", "wait"?: true}``.  With ``wait`` (the CLI's
default) the reply comes when the check is over – metadata refreshed, found
versions downloaded and installed into the repository (validation and swap
follow on their own) – as ``{"check": {…}}``, the check's result as in ``update-status``'s
``last_check``; without it the reply is ``{"queued": true}`` at once.  A check
already running finishes first.  ``INVALID_STATE`` when no registry is configured.

CLI: ``edged ctl update check [--no-wait] [--json]``.
"""

from __future__ import annotations

from typing import Any

from edged.errors import RequestError
from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames
from edged.server.commands.update_status import updater

NAME = "update-check"
ENDPOINTS = frozenset({"control"})


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    if not isinstance(header.get("wait", True), bool):
        raise RequestError("'wait' must be true or false")
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any] | None:
    service = updater(daemon)
    if not req.header.get("wait", True):
        service.check_now()
        return {"queued": True}
    service.check_now(lambda result: daemon.post(req, {"check": result}))
    return None
