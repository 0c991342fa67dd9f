"""unmark – clear a version's "bad" mark (and a rejection) so it may be activated again.

Request: ``{"op": "unmark", "version": "v3", "model"?: NAME}``.  Reply:
``{"model", "version", "was_bad": bool}``; the repository is rescanned.

CLI: ``edged ctl unmark v3 [--model N]``.
"""

from __future__ import annotations

from typing import Any

from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames, optional_str, required_version

NAME = "unmark"
ENDPOINTS = frozenset({"control"})
#: Refused with ``SHUTTING_DOWN`` once the daemon drains (see dispatch).
CHANGES_VERSIONS = True


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    optional_str(header, "model")
    required_version(header)
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    model = req.header.get("model")
    was_bad = daemon.models.unmark(model, req.header["version"])
    daemon.models.scan()
    return {"model": daemon.models.slot(model).name, "version": req.header["version"], "was_bad": was_bad}
