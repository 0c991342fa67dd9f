"""quit – graceful shutdown (same as SIGTERM): stop accepting, drain, exit 0.

Request: ``{"op": "quit"}``.  Reply: ``{"stopping": true, "grace_period_s": N}``
sent before the drain starts.

CLI: ``edged ctl quit``.
"""

from __future__ import annotations

from typing import Any

from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames

NAME = "quit"
ENDPOINTS = frozenset({"control"})


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    daemon.request_stop("ctl quit")
    return {"stopping": True, "grace_period_s": daemon.config.server.grace_period_s}
