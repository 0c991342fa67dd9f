from __future__ import annotations

from edged import errors
from edged.errors import ErrorCode


def test_every_code_has_an_exit_status():
    assert set(errors.EXIT_STATUS) == set(ErrorCode)
    assert errors.EXIT_STATUS[ErrorCode.BAD_SHAPE] == 3
    assert errors.EXIT_STATUS[ErrorCode.THROTTLED] == 5


def test_throttled_roundtrips_through_the_wire_with_retry_after():
    wire = errors.Throttled("slow down", retry_after_ms=120).to_wire()
    assert wire == {"code": "THROTTLED", "message": "slow down", "retry_after_ms": 120}
    back = errors.from_wire(wire)
    assert isinstance(back, errors.Throttled) and back.retry_after_ms == 120


def test_request_codes_become_request_errors():
    back = errors.from_wire({"code": "BAD_SIZE", "message": "x"})
    assert isinstance(back, errors.RequestError) and back.code is ErrorCode.BAD_SIZE and back.exit_status == 3


def test_unknown_code_from_a_newer_server_is_kept():
    back = errors.from_wire({"code": "FROM_THE_FUTURE", "message": "?"})
    assert back.code is ErrorCode.INTERNAL and back.details["wire_code"] == "FROM_THE_FUTURE"


def test_config_error_names_key_and_value():
    exc = errors.ConfigError("server.workers", 0, "must be > 0")
    assert "server.workers" in str(exc) and "0" in str(exc) and exc.exit_status == 7
