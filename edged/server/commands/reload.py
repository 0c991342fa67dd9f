"""reload – re-read the config file and rescan the repository (same as SIGHUP).

Request: ``{"op": "reload"}``.  Reply: ``{"reloaded": true, "restart_needed": [keys...]}``,
or ``CONFIG_INVALID`` when the new file is invalid (the old config stays in force).

CLI: ``edged ctl reload``.
"""

from __future__ import annotations

from typing import Any

from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames

NAME = "reload"
ENDPOINTS = frozenset({"control"})


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    return daemon.reload()
