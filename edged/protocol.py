"""Wire protocol v1: multipart ZeroMQ messages of one JSON header and raw tensor frames.

This module is shared by the daemon and the client and knows nothing about
sockets: it turns headers and arrays into frames and back, and checks what it
decodes.  docs/protocol.md is the normative description; keep the two in step.

A message is ``[header, frame_0, frame_1, ...]``:

* ``header`` – UTF-8 JSON object with at least ``"v": 1``, ``"id"`` and ``"op"``
  (requests) or ``"ok"`` (replies);
* ``frame_i`` – the raw bytes of the i-th tensor named in ``header["inputs"]``
  (requests) or ``header["outputs"]`` (replies): little-endian, C order, with the
  dtype and shape given in the header.  An input described with
  ``"encoding": "image"`` carries an encoded JPEG/PNG instead.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from edged.errors import ErrorCode, RequestError

PROTOCOL_VERSION = 1

#: dtypes allowed on the wire (numpy names).  Everything is little-endian.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
}

#: Wire name of each native wire dtype: ``dtype.name`` is computed anew on every
#: access (≈4 µs), a dict lookup by dtype is not.  Other byte orders miss it and
#: take the slow path.
_NAME_OF: dict[np.dtype, str] = {np.dtype(name): name for name in DTYPES}

PRIORITIES = ("low", "normal", "high")

#: Default upper bound for a header frame; the daemon's is configurable.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024

#: Deepest nesting of arrays/objects a header may have.  A real header is 3 deep
#: (``inputs`` → descriptor → ``shape``); 20,000 levels would otherwise reach
#: Python's recursion limit in the decoder.
MAX_HEADER_DEPTH = 32

_LITTLE = sys.byteorder == "little"


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, fast for the wire dtypes."""
    return _NAME_OF.get(dtype) or dtype.name


def dumps(header: dict[str, Any]) -> bytes:
    return _ENCODER.encode(header).encode()


def _refuse_constant(name: str) -> Any:
    raise RequestError(f"header holds {name}: only finite numbers are allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf without ever naming Infinity
        raise RequestError(f"header number {text[:32]} is out of range: only finite numbers are allowed")
    return value


def _depth_over(value: Any, limit: int) -> bool:
    """True if ``value`` nests arrays/objects more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def loads(raw: bytes | memoryview | str) -> Any:
    """Strict JSON: non-finite numbers (``NaN``, ``Infinity``, ``1e999``) raise :class:`RequestError`."""
    if not isinstance(raw, str):
        raw = (raw if isinstance(raw, bytes) else bytes(raw)).decode("utf-8")
    return _DECODER.decode(raw)


def check_message_size(frames: Sequence[Any], max_bytes: int) -> None:
    """Raise :class:`RequestError` ``TOO_LARGE`` when ``frames`` hold more than ``max_bytes`` together.

    Every socket's messages are held to ``server.max_message_bytes`` here; libzmq's
    MAXMSGSIZE (4x it) only bounds one frame, before it is read.
    """
    size = 0
    for f in frames:  # a loop, not sum() over a generator: this runs for every message
        size += len(f)
    if size > max_bytes:
        raise RequestError(f"message is {size} bytes, limit {max_bytes} (server.max_message_bytes)",
                           code=ErrorCode.TOO_LARGE)


def parse_header(raw: bytes | memoryview, max_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> dict[str, Any]:
    """Decode and check a header frame.

    Raises :class:`RequestError` with ``TOO_LARGE`` when the frame is over
    ``max_bytes`` or nests deeper than :data:`MAX_HEADER_DEPTH`, ``BAD_REQUEST``
    when it is not a UTF-8 JSON object or holds a non-finite number, and
    ``UNSUPPORTED_PROTOCOL`` when ``v`` is missing or not 1.
    """
    header = parse_object(raw, max_bytes)
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise RequestError(
            f"protocol version {version!r} not supported; this daemon speaks {PROTOCOL_VERSION}",
            code=ErrorCode.UNSUPPORTED_PROTOCOL,
        )
    return header


def parse_object(raw: bytes | memoryview, max_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> dict[str, Any]:
    """A bounded UTF-8 JSON object (no version check: Frigate's headers have none).

    Raises :class:`RequestError`: ``TOO_LARGE`` over ``max_bytes``, else ``BAD_REQUEST``.
    """
    if len(raw) > max_bytes:
        raise RequestError(f"header is {len(raw)} bytes, limit {max_bytes}", code=ErrorCode.TOO_LARGE)
    data = bytes(raw)
    try:
        header = loads(data)
    except RecursionError:
        raise _too_deep() from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise RequestError("header must be a JSON object")
    # Only a header with enough brackets can be too deep: the walk is skipped for real ones.
    if data.count(b"[") + data.count(b"{") > MAX_HEADER_DEPTH and _depth_over(header, MAX_HEADER_DEPTH):
        raise _too_deep()
    return header


def _too_deep() -> RequestError:
    return RequestError(f"header nests deeper than {MAX_HEADER_DEPTH} levels", code=ErrorCode.TOO_LARGE)


def tensor_meta(array: np.ndarray, name: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"dtype": dtype_name(array.dtype), "shape": list(array.shape)}
    if name is not None:
        meta["name"] = name
    return meta


def as_wire_array(array: Any) -> np.ndarray:
    """Return ``array`` as a C-contiguous little-endian ndarray of a wire dtype.

    Raises :class:`RequestError` (``BAD_DTYPE``) for dtypes the protocol lacks.
    """
    arr = np.asarray(array)
    if arr.dtype in _NAME_OF:  # native byte order, a wire dtype
        return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
    if arr.dtype.name not in DTYPES:
        raise RequestError(f"dtype {arr.dtype} is not supported on the wire", code=ErrorCode.BAD_DTYPE)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _LITTLE):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr)


def is_dtype_name(value: Any) -> bool:
    """Whether ``value`` names a wire dtype (a peer's list or object is simply not one)."""
    return isinstance(value, str) and value in DTYPES


def _all_dims(shape: list[Any]) -> bool:
    """Whether every entry of ``shape`` is an int in 0 .. 2**31 - 1, not a bool (a loop:
    cheaper than all() over a generator, and this runs for every tensor)."""
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d < 2**31:
            return False
    return True


def array_from_frame(meta: Any, frame: bytes | memoryview, index: int) -> np.ndarray:
    """Rebuild a tensor from its header entry and raw frame, without copying.

    Raises :class:`RequestError` with ``BAD_REQUEST`` (malformed entry),
    ``BAD_DTYPE``, ``BAD_SHAPE`` or ``BAD_SIZE`` (byte count does not match
    dtype × shape).  The array is read-only: it aliases the frame.
    """
    if not isinstance(meta, dict):
        raise RequestError(f"tensor {index}: descriptor must be an object")
    dtype_name = meta.get("dtype")
    if not is_dtype_name(dtype_name):
        raise RequestError(f"tensor {index}: dtype {dtype_name!r} not supported", code=ErrorCode.BAD_DTYPE)
    shape = meta.get("shape")
    if not isinstance(shape, list) or len(shape) > 8 or not _all_dims(shape):
        raise RequestError(f"tensor {index}: shape {shape!r} is not a list of non-negative ints", code=ErrorCode.BAD_SHAPE)
    dtype = DTYPES[dtype_name]
    expected = dtype.itemsize * math.prod(shape)  # exact ints; ~20x cheaper than np.prod per request
    if len(frame) != expected:
        raise RequestError(
            f"tensor {index}: {len(frame)} bytes, but {dtype_name}{shape} needs {expected}",
            code=ErrorCode.BAD_SIZE,
        )
    return np.frombuffer(frame, dtype=dtype).reshape(shape)


def encode(header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> list[Any]:
    """Frames for a message: the header then each array's buffer (no copy)."""
    header.setdefault("v", PROTOCOL_VERSION)
    return [dumps(header), *(memoryview(a).cast("B") if a.nbytes else b"" for a in arrays)]


def error_header(request_id: Any, op: Any, error: dict[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "op": op, "ok": False, "error": error}


def describe_parallelism(p: dict[str, Any], *, runs: int | None = None) -> str:
    """One line for the log and ``edged ctl status``: what runs in parallel, and why.

    ``p`` is the ``parallelism`` object of a ``status`` reply; ``runs``, when given, is
    how many requests the main loop has run itself (its ``inline_runs``).  Here, not in
    the server, because the daemon logs this line at start and the CLI prints it from a
    reply, and the CLI must not import the server package.
    """
    threads = "runtime's choice of" if p["num_threads"] == 0 else str(p["num_threads"])
    solo = (f"a request running alone gets {p['solo_threads']} threads" if p["solo_threads"]
            else "no solo interpreter")
    if p["solo_threads"] and p.get("inline_max_ms"):
        solo += f", on the main loop while its model's invoke() takes at most {p['inline_max_ms']:g} ms"
        if runs is not None:
            solo += f" ({runs} so far)"
    why = [", ".join(f"{k} {v}" for k, v in p["chosen"].items())] if p.get("chosen") else []
    if p.get("cores"):
        why.append(f"machine: {p['cores']} cores" + (f", {p['memory_mb']} MB" if p.get("memory_mb") else ""))
    return f"{p['workers']} workers x {threads} thread(s); {solo}" + (f" ({'; '.join(why)})" if why else "")


def unsafe_ipc_directory(endpoint: str, owner: int | None = None) -> str | None:
    """Why the directory of an ``ipc://`` endpoint is not safe to use, or None.

    Whoever can write to the directory of a socket can replace the socket and answer
    in the daemon's place (forged predictions) or receive the requests.  So the
    directory must be writable by its owner only (no group or other write bit,
    sticky or not), and its owner must be trusted:

    * ``owner`` given (the daemon: its own uid): the directory must belong to it;
    * ``owner`` None (a client): root or the caller, or a directory given out by
      root in a root-only parent (systemd's ``/run/edged``, owned by the service user).

    A symlinked directory is judged by its target, and the link itself must belong
    to a trusted user too.  Not an ipc endpoint, an abstract socket (``@name``) or a
    directory that does not exist yet (the daemon creates it) is None.
    """
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    directory = os.path.dirname(os.path.abspath(endpoint[len("ipc://"):]))
    trusted = {0, os.geteuid()} if owner is None else {owner}
    try:
        link = os.lstat(directory)
        st = os.stat(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot check its directory {directory}: {exc.strerror}"
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in trusted:
        return f"its directory {directory} is a symlink owned by uid {link.st_uid}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"its directory {directory} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                f"anyone could replace the socket")
    if st.st_uid in trusted:
        return None
    if owner is None:
        try:
            parent = os.stat(os.path.dirname(directory))
        except OSError:
            parent = None
        if parent is not None and parent.st_uid == 0 and not parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None  # root made it and gave it to its owner (RuntimeDirectory=)
        return (f"its directory {directory} belongs to uid {st.st_uid}, neither root nor this user, "
                f"and not given out by root (its parent is not a root-only directory)")
    return f"its directory {directory} belongs to uid {st.st_uid}, not to this user (uid {owner})"
