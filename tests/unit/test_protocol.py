from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edged import protocol
from edged.errors import ErrorCode, RequestError


def test_encode_then_decode_roundtrip_every_dtype():
    for name in protocol.DTYPES:
        arr = (np.arange(24) % 3).astype(name).reshape(2, 3, 4)
        frames = protocol.encode({"id": "1", "op": "predict", "inputs": [protocol.tensor_meta(arr, "x")]}, [arr])
        header = protocol.parse_header(frames[0])
        assert header["v"] == 1
        back = protocol.array_from_frame(header["inputs"][0], bytes(frames[1]), 0)
        assert back.dtype == arr.dtype and back.shape == arr.shape
        np.testing.assert_array_equal(back, arr)


def test_decoded_array_aliases_the_frame():
    buf = bytearray(np.arange(4, dtype=np.float32).tobytes())
    arr = protocol.array_from_frame({"dtype": "float32", "shape": [4]}, memoryview(buf), 0)
    buf[0:4] = np.float32(9).tobytes()
    assert arr[0] == 9  # no copy was made


def test_big_endian_input_is_sent_little_endian():
    arr = np.arange(3, dtype=">f4")
    wire = protocol.as_wire_array(arr)
    assert wire.dtype.byteorder in ("<", "=")
    np.testing.assert_array_equal(wire, [0, 1, 2])


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff\xfe", ErrorCode.BAD_REQUEST),
        (b"not json", ErrorCode.BAD_REQUEST),
        (b"[1,2]", ErrorCode.BAD_REQUEST),
        (b'{"op":"predict"}', ErrorCode.UNSUPPORTED_PROTOCOL),
        (b'{"v":2,"op":"predict"}', ErrorCode.UNSUPPORTED_PROTOCOL),
        (b'{"v":1,"pad":"' + b"x" * 70000 + b'"}', ErrorCode.TOO_LARGE),
    ],
)
def test_bad_headers_raise_their_code(raw, code):
    with pytest.raises(RequestError) as info:
        protocol.parse_header(raw)
    assert info.value.code is code


@pytest.mark.parametrize(
    ("meta", "nbytes", "code"),
    [
        ({"dtype": "complex64", "shape": [1]}, 8, ErrorCode.BAD_DTYPE),
        ({"dtype": ["float32"], "shape": [1]}, 4, ErrorCode.BAD_DTYPE),  # unhashable: was a TypeError
        ({"dtype": {"a": 1}, "shape": [1]}, 4, ErrorCode.BAD_DTYPE),
        ({"dtype": "float32", "shape": "1x4"}, 16, ErrorCode.BAD_SHAPE),
        ({"dtype": "float32", "shape": [-1]}, 4, ErrorCode.BAD_SHAPE),
        ({"dtype": "float32", "shape": [True]}, 4, ErrorCode.BAD_SHAPE),
        ({"dtype": "float32", "shape": [1, 4]}, 15, ErrorCode.BAD_SIZE),
        ("float32", 4, ErrorCode.BAD_REQUEST),
    ],
)
def test_bad_tensors_raise_their_code(meta, nbytes, code):
    with pytest.raises(RequestError) as info:
        protocol.array_from_frame(meta, b"\0" * nbytes, 0)
    assert info.value.code is code


def test_unsupported_dtype_on_send():
    with pytest.raises(RequestError) as info:
        protocol.as_wire_array(np.zeros(2, np.complex64))
    assert info.value.code is ErrorCode.BAD_DTYPE


def test_error_header_shape():
    h = protocol.error_header("7", "predict", {"code": "BAD_SHAPE", "message": "m"})
    assert json.loads(protocol.dumps(h)) == {"v": 1, "id": "7", "op": "predict", "ok": False,
                                             "error": {"code": "BAD_SHAPE", "message": "m"}}


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_parse_header_refuses_non_finite_numbers(number):
    with pytest.raises(RequestError, match="finite") as info:
        protocol.parse_header(f'{{"v": 1, "id": "a", "op": "x", "n": [{number}]}}'.encode())
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_parse_header_caps_nesting_depth():
    ok = '{"v": 1, "x": ' + "[" * (protocol.MAX_HEADER_DEPTH - 1) + "]" * (protocol.MAX_HEADER_DEPTH - 1) + "}"
    assert protocol.parse_header(ok.encode())["v"] == 1
    for depth in (protocol.MAX_HEADER_DEPTH, 20_000):
        deep = '{"v": 1, "x": ' + '[{"a": ' * depth + "1" + "}]" * depth + "}"
        with pytest.raises(RequestError, match="nests deeper") as info:
            protocol.parse_header(deep.encode(), max_bytes=1 << 20)
        assert info.value.code is ErrorCode.TOO_LARGE


def test_message_size_counts_every_frame():
    protocol.check_message_size([b"h" * 10, b"x" * 90], 100)
    with pytest.raises(RequestError, match="message is 101 bytes, limit 100") as info:
        protocol.check_message_size([b"h" * 11, b"x" * 90], 100)
    assert info.value.code is ErrorCode.TOO_LARGE


def test_ipc_directory_checks(tmp_path):
    import os

    from edged.protocol import unsafe_ipc_directory

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    assert unsafe_ipc_directory(f"ipc://{mine}/s.sock") is None
    assert unsafe_ipc_directory(f"ipc://{mine}/s.sock", os.geteuid()) is None
    assert unsafe_ipc_directory("tcp://127.0.0.1:5555") is None
    assert unsafe_ipc_directory(f"ipc://{tmp_path}/missing/s.sock") is None  # the daemon creates it
    os.chmod(mine, 0o775)
    assert "writable by others" in unsafe_ipc_directory(f"ipc://{mine}/s.sock")
    if os.geteuid() == 0:  # a directory another user owns needs chown
        given = tmp_path / "run"
        given.mkdir(mode=0o755)
        os.chown(given, 65534, 65534)
        # Client: root made it in a root-only parent and gave it away (systemd's RuntimeDirectory=).
        assert os.stat(tmp_path).st_uid == 0 and not os.stat(tmp_path).st_mode & 0o022
        assert unsafe_ipc_directory(f"ipc://{given}/s.sock") is None
        # Daemon: not its own.
        assert "belongs to uid 65534" in unsafe_ipc_directory(f"ipc://{given}/s.sock", os.geteuid())
        link = tmp_path / "link"
        link.symlink_to(given)
        os.lchown(link, 65534, 65534)
        assert "symlink owned by uid 65534" in unsafe_ipc_directory(f"ipc://{link}/s.sock")


PARALLELISM = {"workers": 2, "num_threads": 1, "solo_threads": 2, "inline_max_ms": 20.0, "inline_runs": 5,
               "cores": 4, "memory_mb": 7812, "chosen": {"server.workers": "auto", "runtime.solo_threads": "config"}}


@pytest.mark.parametrize(("p", "line"), [
    (PARALLELISM, "2 workers x 1 thread(s); a request running alone gets 2 threads, on the main loop while its "
                  "model's invoke() takes at most 20 ms (server.workers auto, runtime.solo_threads config; "
                  "machine: 4 cores, 7812 MB)"),
    ({**PARALLELISM, "workers": 3, "num_threads": 0, "solo_threads": 0, "inline_max_ms": 2.5, "cores": 1,
      "memory_mb": None, "chosen": {"server.workers": "config"}},
     "3 workers x runtime's choice of thread(s); no solo interpreter (server.workers config; machine: 1 cores)"),
    ({**PARALLELISM, "workers": 1, "num_threads": 2, "solo_threads": 4, "inline_max_ms": 0, "chosen": {}},
     "1 workers x 2 thread(s); a request running alone gets 4 threads (machine: 4 cores, 7812 MB)"),
    ({**PARALLELISM, "solo_threads": 0, "cores": None, "memory_mb": None},
     "2 workers x 1 thread(s); no solo interpreter (server.workers auto, runtime.solo_threads config)"),
    ({**PARALLELISM, "solo_threads": 0, "cores": None, "chosen": {}}, "2 workers x 1 thread(s); no solo interpreter"),
])
def test_the_parallelism_line_is_the_one_the_daemon_logs_at_start(p, line):
    assert protocol.describe_parallelism(p) == line


def test_ctl_status_prints_the_same_parallelism_line_with_the_requests_run_on_the_main_loop():
    from edged.cli import _parallelism_text

    assert _parallelism_text(PARALLELISM) == [
        "parallelism 2 workers x 1 thread(s); a request running alone gets 2 threads, on the main loop while its "
        "model's invoke() takes at most 20 ms (5 so far) (server.workers auto, runtime.solo_threads config; "
        "machine: 4 cores, 7812 MB)"]
    assert _parallelism_text(None) == []  # an older daemon's status has none


def test_ctl_status_text_needs_no_server_package():
    """The ctl side sits with the client above protocol and errors: printing a status pulls no server in."""
    code = (f"import sys, edged.cli as cli; cli._parallelism_text({PARALLELISM!r}); "
            "print(sorted(m for m in sys.modules if m.startswith('edged.server')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
