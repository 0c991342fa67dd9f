"""update-status – what the update client last did and what it waits for (control endpoint).

Request: ``{"op": "update-status"}``.  Reply: ``{"url", "channel", "strategy",
"device_id", "checks", "checking", "last_check": {"at", "reason", "ok",
"refused", "kind", "duration_s", "requests", "bytes", "decisions": [{"model",
"action", "reason", "version", "available": [...]}], "installed"}, "download":
{"model", "version", "file", "bytes_done", "bytes_total"} | null, "next_check":
{"in_s", "why"}, "failed": {model: {version: why}}}``.  ``INVALID_STATE`` when
no registry is configured (``[update] url``).

CLI: ``edged ctl update status [--json]``.
"""

from __future__ import annotations

from typing import Any

from edged.errors import ErrorCode, RequestError
from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames

NAME = "update-status"
ENDPOINTS = frozenset({"control"})


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    no_frames(frames)


def updater(daemon: DaemonAPI) -> Any:
    """The daemon's update service; raises ``INVALID_STATE`` when updates are not configured."""
    if daemon.updater is None:
        raise RequestError("remote updates are off: set [update] url and root (docs/updates.md)",
                           code=ErrorCode.INVALID_STATE)
    return daemon.updater


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    return updater(daemon).status()
