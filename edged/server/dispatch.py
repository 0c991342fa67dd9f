"""The one place where requests meet commands and exceptions become wire errors.

Every reply that says ``"ok": false`` is built by :func:`wire_error`, from any
exception: an :class:`~edged.errors.EdgedError` keeps its code and details,
anything else is a bug and becomes ``INTERNAL`` (logged with its traceback; the
message sent is generic so no internals leak to clients).
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from edged import protocol
from edged.errors import EdgedError, ErrorCode, RequestError, RetryableError
from edged.server import commands
from edged.server.api import DaemonAPI, Request
from edged.states import DaemonState

log = logging.getLogger("edged.server")


def wire_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, EdgedError):
        return exc.to_wire()
    log.exception("internal error", exc_info=exc)
    return {"code": ErrorCode.INTERNAL.value, "message": f"internal error ({type(exc).__name__}); see the daemon log"}


def error_reply(request_id: Any, op: Any, exc: BaseException) -> dict[str, Any]:
    return protocol.error_header(request_id, op, wire_error(exc))


def _json_safe(value: Any) -> Any:
    try:
        protocol.dumps({"v": value})
        return value
    except (TypeError, ValueError, RecursionError):
        return None


def encode_reply(header: dict[str, Any]) -> bytes:
    """The header frame for ``header``; never raises.

    A header that cannot be serialised (a NaN score, a non-JSON value a command
    returned) is a bug on our side: it becomes ``INTERNAL`` with the traceback
    logged, echoing ``id``/``op`` only when they are themselves serialisable.
    """
    try:
        return protocol.dumps(header)
    except (TypeError, ValueError, RecursionError) as exc:
        return protocol.dumps(error_reply(_json_safe(header.get("id")), _json_safe(header.get("op")), exc))


def _refused_while_draining(command: ModuleType, endpoint: str) -> bool:
    """Whether a drain refuses ``command`` on ``endpoint``, with the code clients already retry on.

    A swap started now would be cut off by the exit (or hold it up), and a run started
    now could be on a version the exit tears down.  The predict socket takes nothing at
    all: a ``health`` answered there would tell an application that a daemon which no
    longer takes its predicts can serve.  Control and Frigate calls that neither run a
    model nor change versions are still answered (status, quit, Frigate's handshake).
    """
    return (endpoint == "predict" or getattr(command, "RUNS_MODEL", False)
            or getattr(command, "CHANGES_VERSIONS", False))


def dispatch(daemon: DaemonAPI, req: Request) -> None:
    """Run the command named by ``req.op``; any failure is answered as an error reply."""
    op = req.op
    try:
        command = commands.REGISTRY.get(op) if isinstance(op, str) else None
        if command is None or req.endpoint not in command.ENDPOINTS:
            where = "" if command is None else f" on the {req.endpoint} endpoint"
            raise RequestError(f"unknown op {op!r}{where}", code=ErrorCode.UNKNOWN_OP)
        command.validate(req.header, req.frames)
        if daemon.state is DaemonState.DRAINING and _refused_while_draining(command, req.endpoint):
            raise RetryableError(f"daemon is shutting down; {op} refused", code=ErrorCode.SHUTTING_DOWN)
        result = command.execute(daemon, req)
    except Exception as exc:
        daemon.reply(req, error_reply(req.id, op, exc))
        return
    if result is not None:
        daemon.reply(req, result)
