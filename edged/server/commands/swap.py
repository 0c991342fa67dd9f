"""swap – validate a version and make it serve (control endpoint).

Request: ``{"op": "swap", "version": "v3", "model"?: NAME, "force"?: bool}``.
The reply comes when the swap is done: ``{"model", "version", "previous",
"changed", "validate_ms", ...}``, or ``VALIDATION_FAILED`` / ``CONTRACT_CHANGED``
(``force`` accepts a changed contract) / ``INVALID_STATE`` (marked bad) /
``UNKNOWN_VERSION``.  The swapped-in version starts its probation (not the
committed version: it passed one).  The swap holds: auto-activation waits until
``unpin`` or a version newer than any there now is published; the reply says so
in ``held`` (the newest version at the time) and ``holds_until``.

CLI: ``edged ctl swap v3 [--model N] [--force]``.
"""

from __future__ import annotations

from typing import Any

from edged.errors import RequestError
from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames, optional_str, required_version

NAME = "swap"
ENDPOINTS = frozenset({"control"})
#: Refused with ``SHUTTING_DOWN`` once the daemon drains (see dispatch).
CHANGES_VERSIONS = True


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    optional_str(header, "model")
    required_version(header)
    if not isinstance(header.get("force", False), bool):
        raise RequestError("'force' must be true or false")
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> None:
    daemon.run_repository_op(req, "swap", version=req.header["version"], force=req.header.get("force", False))
