"""status – the daemon's state for operators (control endpoint only).

Request: ``{"op": "status"}``.  Reply: ``{"state", "pid", "uptime_s", "version",
"runtime", "endpoints", "config", "models": [...], "queue_depth", "workers",
"profile"}``.

CLI: ``edged ctl status``.
"""

from __future__ import annotations

from typing import Any

from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames

NAME = "status"
ENDPOINTS = frozenset({"control"})


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    return daemon.status()
