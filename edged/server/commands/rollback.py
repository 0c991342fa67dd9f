"""rollback – go back to the previous good version now (control endpoint).

Request: ``{"op": "rollback", "model"?: NAME}``.  The serving version is marked
bad (so auto-activation will not take it again until ``unmark``) and the
previous committed version serves.  Reply: ``{"model", "version", "from",
"reason"}`` or ``INVALID_STATE`` when there is nothing to go back to.

CLI: ``edged ctl rollback [--model N]``.
"""

from __future__ import annotations

from typing import Any

from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames, optional_str

NAME = "rollback"
ENDPOINTS = frozenset({"control"})
#: Refused with ``SHUTTING_DOWN`` once the daemon drains (see dispatch).
CHANGES_VERSIONS = True


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    optional_str(header, "model")
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> None:
    daemon.run_repository_op(req, "rollback", reason="rolled back by operator")
