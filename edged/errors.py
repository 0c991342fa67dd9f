"""The one table of edged error codes, and the exceptions that carry them.

Server and client share this module.  On the server an exception that is an
:class:`EdgedError` becomes a wire error with its ``code`` in exactly one place
(``edged.server.dispatch``); any other exception becomes ``INTERNAL``.  On the
client a wire error becomes the exception class registered for its code, so
applications can ``except edged.errors.Throttled``.

The CLI maps each code to an exit status (``EXIT_STATUS``): 0 is success, 1 an
unexpected failure, 2 a usage error (argparse), and the rest are per class so
scripts can tell "your input is wrong" from "try again later".
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(str, enum.Enum):
    """Error codes carried in ``{"error": {"code": ...}}`` replies.

    Each member's value is its wire name.  Never renumber or rename: clients in
    other languages match on these strings.
    """

    # -- the request itself is wrong (exit 3) --
    BAD_REQUEST = "BAD_REQUEST"  # malformed frames, header not a JSON object, missing fields
    UNSUPPORTED_PROTOCOL = "UNSUPPORTED_PROTOCOL"  # header "v" is not one we speak
    TOO_LARGE = "TOO_LARGE"  # message, header or image over the configured limit
    UNKNOWN_OP = "UNKNOWN_OP"
    BAD_DTYPE = "BAD_DTYPE"
    BAD_SHAPE = "BAD_SHAPE"
    BAD_SIZE = "BAD_SIZE"  # frame byte count != dtype size x shape
    BAD_IMAGE = "BAD_IMAGE"  # undecodable, or a decompression bomb
    # -- the thing asked for does not exist (exit 4) --
    UNKNOWN_MODEL = "UNKNOWN_MODEL"
    UNKNOWN_VERSION = "UNKNOWN_VERSION"
    UNKNOWN_REQUEST = "UNKNOWN_REQUEST"  # feedback for a request id never served, or expired
    # -- not now; retry later (exit 5) --
    THROTTLED = "THROTTLED"  # carries retry_after_ms
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    INVALID_STATE = "INVALID_STATE"  # control call not allowed in the current state
    # -- a model/version was refused (exit 6) --
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    VALIDATION_FAILED = "VALIDATION_FAILED"
    CONTRACT_CHANGED = "CONTRACT_CHANGED"
    # -- bad configuration (exit 7) --
    CONFIG_INVALID = "CONFIG_INVALID"
    # -- client-side transport failures (exit 8); never sent by the server --
    TIMEOUT = "TIMEOUT"
    PROTOCOL_ERROR = "PROTOCOL_ERROR"  # the reply could not be understood
    AUTH_FAILED = "AUTH_FAILED"  # the CURVE handshake was refused (unknown client key, or CURVE on one side only)
    NOT_RUNNING = "NOT_RUNNING"  # nothing listens on the ipc:// endpoint (no socket file, refused)
    # -- a bug or a runtime failure (exit 1) --
    INTERNAL = "INTERNAL"


EXIT_STATUS: dict[ErrorCode, int] = {}
for _code, _status in (
    ((ErrorCode.BAD_REQUEST, ErrorCode.UNSUPPORTED_PROTOCOL, ErrorCode.TOO_LARGE, ErrorCode.UNKNOWN_OP,
      ErrorCode.BAD_DTYPE, ErrorCode.BAD_SHAPE, ErrorCode.BAD_SIZE, ErrorCode.BAD_IMAGE), 3),
    ((ErrorCode.UNKNOWN_MODEL, ErrorCode.UNKNOWN_VERSION, ErrorCode.UNKNOWN_REQUEST), 4),
    ((ErrorCode.THROTTLED, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.SHUTTING_DOWN, ErrorCode.INVALID_STATE), 5),
    ((ErrorCode.MODEL_LOAD_FAILED, ErrorCode.VALIDATION_FAILED, ErrorCode.CONTRACT_CHANGED), 6),
    ((ErrorCode.CONFIG_INVALID,), 7),
    ((ErrorCode.TIMEOUT, ErrorCode.PROTOCOL_ERROR, ErrorCode.AUTH_FAILED, ErrorCode.NOT_RUNNING), 8),
    ((ErrorCode.INTERNAL,), 1),
):
    for _c in _code:
        EXIT_STATUS[_c] = _status


class EdgedError(Exception):
    """Base of every error edged raises on purpose.

    ``code`` says what kind of failure it is; ``details`` are extra JSON-able
    fields sent alongside the message (e.g. ``retry_after_ms``).
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None, **details: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, **self.details}

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS.get(self.code, 1)


class RequestError(EdgedError):
    """The request is malformed or does not fit the model; fix the input, do not retry."""

    code = ErrorCode.BAD_REQUEST


class NotFoundError(EdgedError):
    """The model or version named does not exist."""

    code = ErrorCode.UNKNOWN_MODEL


class RetryableError(EdgedError):
    """Not now: the daemon is throttling, shutting down or busy. Retry later."""

    code = ErrorCode.SHUTTING_DOWN


class Throttled(RetryableError):
    """The power governor refused the request. ``retry_after_ms`` says when to retry."""

    code = ErrorCode.THROTTLED

    def __init__(self, message: str, *, retry_after_ms: int = 0, **details: Any) -> None:
        super().__init__(message, retry_after_ms=int(retry_after_ms), **details)
        self.retry_after_ms = int(retry_after_ms)


class DeadlineExceeded(RetryableError):
    """The request's deadline passed before it could be computed; nothing was computed."""

    code = ErrorCode.DEADLINE_EXCEEDED


class ModelError(EdgedError):
    """A model or version could not be loaded or was refused by validation."""

    code = ErrorCode.MODEL_LOAD_FAILED


class ConfigError(EdgedError, ValueError):
    """The configuration is invalid. The message names the key and the bad value."""

    code = ErrorCode.CONFIG_INVALID

    def __init__(self, key: str, value: Any, why: str) -> None:
        super().__init__(f"config {key} = {value!r}: {why}", key=key)
        self.key = key
        self.value = value


class TransportError(EdgedError):
    """Client side: the daemon did not answer in time or answered garbage."""

    code = ErrorCode.TIMEOUT


class InternalError(EdgedError):
    code = ErrorCode.INTERNAL


_CLASS_FOR_CODE: dict[ErrorCode, type[EdgedError]] = {
    ErrorCode.THROTTLED: Throttled,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    ErrorCode.UNKNOWN_MODEL: NotFoundError,
    ErrorCode.UNKNOWN_VERSION: NotFoundError,
    ErrorCode.UNKNOWN_REQUEST: NotFoundError,
    ErrorCode.SHUTTING_DOWN: RetryableError,
    ErrorCode.INVALID_STATE: RetryableError,
    ErrorCode.MODEL_LOAD_FAILED: ModelError,
    ErrorCode.VALIDATION_FAILED: ModelError,
    ErrorCode.CONTRACT_CHANGED: ModelError,
    ErrorCode.TIMEOUT: TransportError,
    ErrorCode.PROTOCOL_ERROR: TransportError,
    ErrorCode.AUTH_FAILED: TransportError,
    ErrorCode.NOT_RUNNING: TransportError,
    ErrorCode.INTERNAL: InternalError,
}


def from_wire(error: dict[str, Any]) -> EdgedError:
    """Rebuild the typed exception for a wire error object (client side).

    An unknown code (a newer server) becomes a plain :class:`EdgedError` with
    code ``INTERNAL`` and the original code kept in ``details["wire_code"]``.
    """
    raw_code = str(error.get("code", "INTERNAL"))
    message = str(error.get("message", raw_code))
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    try:
        code = ErrorCode(raw_code)
    except ValueError:
        return EdgedError(message, code=ErrorCode.INTERNAL, wire_code=raw_code, **details)
    cls = _CLASS_FOR_CODE.get(code, RequestError if EXIT_STATUS.get(code) == 3 else EdgedError)
    if cls is Throttled:
        return Throttled(message, **details)
    if cls is ConfigError:  # pragma: no cover - never on the wire as such
        return EdgedError(message, code=code, **details)
    return cls(message, code=code, **details)
