"""pin – hold a model on a version; auto-activation leaves it alone (control endpoint).

Request: ``{"op": "pin", "version": "v2", "model"?: NAME}``.  Swaps to the
version first if it is not serving (validated like any swap).  Reply:
``{"model", "pinned", "version"}``.

CLI: ``edged ctl pin v2 [--model N]``.
"""

from __future__ import annotations

from typing import Any

from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames, optional_str, required_version

NAME = "pin"
ENDPOINTS = frozenset({"control"})
#: Refused with ``SHUTTING_DOWN`` once the daemon drains (see dispatch).
CHANGES_VERSIONS = True


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    optional_str(header, "model")
    required_version(header)
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> None:
    daemon.run_repository_op(req, "pin", version=req.header["version"])
