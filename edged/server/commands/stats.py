"""stats – counters and latency per model and version.

Request: ``{"op": "stats"}``.  Reply: ``{"stats": {...}}`` (see docs/protocol.md).

CLI: ``edged ctl stats [--prometheus]``.
"""

from __future__ import annotations

from typing import Any

from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames

NAME = "stats"
ENDPOINTS = frozenset({"predict", "control"})


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    return {"stats": daemon.stats_snapshot()}
