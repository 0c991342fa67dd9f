"""power – the power reading, the profile in effect and why; manual override (control endpoint).

Request: ``{"op": "power"}`` shows; ``{"op": "power", "profile": "powersave",
"for_s"?: 600}`` overrides (until ``for_s`` passes or ``auto``);
``{"op": "power", "auto": true}`` returns to the policy.  Reply: ``{"profile",
"enabled", "source", "reading", "reason", "policy", "limits", "governor"}``.

CLI: ``edged ctl power [--profile P [--for DURATION] | --auto]``; DURATION like
``90``, ``90s``, ``10m``, ``2h``.
"""

from __future__ import annotations

from typing import Any

from edged.errors import RequestError
from edged.server.api import DaemonAPI, Request
from edged.server.commands._checks import no_frames, optional_number, optional_str

NAME = "power"
ENDPOINTS = frozenset({"control"})


def validate(header: dict[str, Any], frames: list[Any]) -> None:
    optional_str(header, "profile")
    optional_number(header, "for_s")
    if not isinstance(header.get("auto", False), bool):
        raise RequestError("'auto' must be true or false")
    if header.get("auto") and header.get("profile"):
        raise RequestError("give either 'profile' or 'auto', not both")
    no_frames(frames)


def execute(daemon: DaemonAPI, req: Request) -> dict[str, Any]:
    h = req.header
    return daemon.power_override(h.get("profile"), h.get("for_s"), bool(h.get("auto", False)))
