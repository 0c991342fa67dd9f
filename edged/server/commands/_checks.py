"""Small validators shared by command modules; each raises ``BAD_REQUEST`` naming the field."""

from __future__ import annotations

from typing import Any

from edged.errors import RequestError


def optional_str(header: dict[str, Any], key: str) -> str | None:
    value = header.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(f"{key!r} must be a string")
    return value


def optional_number(header: dict[str, Any], key: str, *, minimum: float = 0) -> float | None:
    value = header.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise RequestError(f"{key!r} must be a number >= {minimum}")
    return float(value)


def no_frames(frames: list[Any]) -> None:
    if frames:
        raise RequestError(f"this op takes no data frames, got {len(frames)}")


def required_version(header: dict[str, Any]) -> str:
    value = header.get("version")
    if not isinstance(value, str):
        raise RequestError("'version' is required (e.g. \"v3\")")
    return value
