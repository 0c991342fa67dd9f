"""health – is the daemon able to serve?

Request: ``{"op": "health"}``.  Reply: ``{"status": "ok"|"degraded"|"unhealthy",
"state", "models_serving", "stuck_workers", "workers": {"configured", "alive", "lost"},
"loop_age_s", "problems": [...]}``.
``degraded``: serving, but some model has no loadable version or some worker thread
is not running (being restarted, or ``lost`` for good); ``unhealthy``: a worker is stuck
in one invoke() past ``server.stuck_invoke_s``, no worker runs, or nothing is served.

CLI: ``edged health`` (exit 0 only when ok).
"""

from __future__ import annotations

from typing import Any

from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames

NAME = "health"
ENDPOINTS = frozenset({"predict", "control"})


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    return daemon.health()
