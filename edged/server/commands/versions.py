"""versions – every version of a model and its state (control endpoint).

Request: ``{"op": "versions", "model"?: NAME}``.  Reply: ``{"model", "serving",
"committed", "pinned", "versions": [{"version", "state", "reason", "committed",
"pinned"}]}``; ``state`` is one of serving, previous, committed, probation, bad,
incomplete, rejected, available.

CLI: ``edged ctl versions [--model N]``.
"""

from __future__ import annotations

from typing import Any

from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames, optional_str

NAME = "versions"
ENDPOINTS = frozenset({"control"})


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    optional_str(header, "model")
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    return daemon.models.versions(req.header.get("model"))
