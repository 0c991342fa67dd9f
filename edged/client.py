"""The Python client: three lines to a prediction.

::

    from edged import Client
    c = Client()                        # default endpoint, or Client("ipc:///run/edged/edged.sock")
    r = c.predict(x)                    # ndarray, {name: ndarray}, or [ndarray, ...]
    r.outputs, r.model, r.version

Imports only :mod:`edged.protocol`, :mod:`edged.curve` (key files, at the protocol
layer) and :mod:`edged.errors`.  A tcp:// endpoint with CURVE (docs/security.md)
takes ``curve=ClientKeys.from_files(server_key, client_key)``.  A client is not
thread-safe: use one per thread.  Every call has a timeout; when it expires the
socket is closed and reopened (the "Lazy Pirate" pattern) so a lost reply can
never wedge the client, and :class:`~edged.errors.TransportError` is raised.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from edged import protocol
from edged.curve import ClientKeys, is_tcp
from edged.errors import ErrorCode, RequestError, Throttled, TransportError, from_wire


#: Where the systemd unit's daemon listens (RuntimeDirectory=edged).
SYSTEM_RUNTIME_DIR = "/run/edged"


def _runtime_dir() -> str:
    # Mirrors edged.config.runtime_dir without importing the daemon's config module.
    if os.environ.get("RUNTIME_DIRECTORY"):
        return os.environ["RUNTIME_DIRECTORY"].split(":")[0]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "edged")
    return f"/tmp/edged-{os.getuid()}"


def _socket_in_runtime_dir(env: str, sock: str, system_dir: str) -> str:
    """``$env``; else ``sock`` in the daemon's own default directory for this user,
    else in ``system_dir`` (the system daemon's).

    A user's own daemon wins when its socket exists; otherwise a daemon run by
    systemd (``/run/edged``) is found without flags, which is what ``sudo edged
    ctl status`` and an app running as another user need.
    """
    if os.environ.get(env):
        return os.environ[env]
    own = os.path.join(_runtime_dir(), sock)
    system = os.path.join(system_dir, sock)
    if not os.path.exists(own) and os.path.exists(system):
        return f"ipc://{system}"
    return f"ipc://{own}"


def _socket_beside(env: str, sock: str, control: str) -> str:
    """``$env``; else ``sock`` in the directory of the ``control`` endpoint.

    Raises :class:`TransportError` (``NOT_RUNNING``) when ``control`` is not
    ``ipc://``: there is no directory to look in, so the endpoint must be given.
    """
    if os.environ.get(env):
        return os.environ[env]
    if not control.startswith("ipc://"):
        name = sock.removesuffix(".sock")
        raise TransportError(f"no default {name} endpoint for control endpoint {control}; "
                             f"give --{name}-endpoint (server.{name}_endpoint)", code=ErrorCode.NOT_RUNNING)
    return f"ipc://{os.path.join(os.path.dirname(control[len('ipc://'):]), sock)}"


def default_endpoint(system_dir: str = SYSTEM_RUNTIME_DIR) -> str:
    return _socket_in_runtime_dir("EDGED_ENDPOINT", "edged.sock", system_dir)


def default_control_endpoint(system_dir: str = SYSTEM_RUNTIME_DIR) -> str:
    return _socket_in_runtime_dir("EDGED_CONTROL_ENDPOINT", "control.sock", system_dir)


def _check_listening(endpoint: str) -> None:
    """Fail at once when nothing can be listening on an ``ipc://`` endpoint.

    ZeroMQ connects in the background and retries forever, so a missing daemon
    would otherwise show only as a timeout (10 s for ``edged health``).  A plain
    ``connect()`` to the socket file tells at once: no file, or a refused
    connection (the file of a daemon that died).  A daemon that accepts is left
    to ZeroMQ; the probe connection is closed before any byte is sent.
    """
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[len("ipc://"):]
    if path.startswith("@"):
        return  # abstract namespace: no file to look at
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
        why = "no socket file" if not isinstance(exc, ConnectionRefusedError) else "connection refused"
        raise TransportError(f"nothing listens on {endpoint} ({why}); is edged running?",
                             code=ErrorCode.NOT_RUNNING, endpoint=endpoint) from None
    except PermissionError:
        raise TransportError(f"no permission to connect to {endpoint}; run as a member of the socket's group "
                             f"(see server.socket_group) or as root", code=ErrorCode.NOT_RUNNING,
                             endpoint=endpoint) from None
    except OSError:
        return  # e.g. a full backlog: let ZeroMQ try, bounded by the call's timeout
    finally:
        probe.close()


def default_events_endpoint(control_endpoint: str | None = None) -> str:
    """Where the daemon publishes events: ``$EDGED_EVENTS_ENDPOINT``, else ``events.sock``
    beside the control socket (the daemon's default for ``server.events_endpoint``)."""
    return _socket_beside("EDGED_EVENTS_ENDPOINT", "events.sock", control_endpoint or default_control_endpoint())


def events(endpoint: str | None = None, *, topics: Sequence[str] = ("",), timeout: float | None = None,
           context: zmq.Context | None = None) -> Iterator[dict[str, Any]]:
    """Yield the daemon's events (``{"event": "swap", "model": ..., "ts": ...}``) as they come.

    ``timeout``: seconds to wait for each event; past it :class:`TransportError`
    (``TIMEOUT``) is raised.  None waits for ever.  PUB/SUB joins asynchronously,
    so events published in the first moments after the call may be missed.
    """
    endpoint = endpoint or default_events_endpoint()
    _check_listening(endpoint)
    sock = (context or zmq.Context.instance()).socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sock.connect(endpoint)
        while True:
            if not sock.poll(None if timeout is None else timeout * 1000):
                raise TransportError(f"no event from {endpoint} within {timeout:.1f}s", code=ErrorCode.TIMEOUT)
            frames = sock.recv_multipart()
            try:
                if len(frames) != 2 or len(frames[1]) > 1 << 20:
                    raise ValueError(f"{len(frames)} frame(s), {sum(map(len, frames))} bytes")
                event = json.loads(frames[1].decode("utf-8"))
                if not isinstance(event, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                raise TransportError(f"unreadable event from {endpoint}: {exc}",
                                     code=ErrorCode.PROTOCOL_ERROR) from None
            yield event
    finally:
        sock.close(0)


@dataclass
class Prediction:
    outputs: list[np.ndarray]
    model: str
    version: str
    delegate: str
    runtime: str
    profile: str | None
    timing: dict[str, int]
    top_k: list[dict[str, Any]] | None = None
    header: dict[str, Any] = field(default_factory=dict, repr=False)
    #: The daemon's id for this prediction, to quote in :meth:`Client.feedback`.
    request_id: str | None = None


#: Handshake outcomes the client watches on tcp:// endpoints to explain a refused connection.
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class Client:
    """A connection to one edged endpoint (predict by default; see :meth:`control`).

    ``curve`` holds the keys for a tcp:// endpoint served with CURVE; it is not
    used on ipc:// endpoints, which file permissions protect instead.
    """

    def __init__(self, endpoint: str | None = None, timeout: float = 5.0, *,
                 context: zmq.Context | None = None, curve: ClientKeys | None = None) -> None:
        self.endpoint = endpoint or default_endpoint()
        self.timeout = timeout
        self.curve = curve
        self._ctx = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}-{id(self) & 0xFFFFFF:x}-"
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._handshake_failures = 0

    @classmethod
    def control(cls, endpoint: str | None = None, timeout: float = 5.0, *, curve: ClientKeys | None = None) -> Client:
        """A client for the control endpoint (status, reload, swap, ...)."""
        return cls(endpoint or default_control_endpoint(), timeout, curve=curve)

    # -- plumbing ----------------------------------------------------------------------------

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            unsafe = protocol.unsafe_ipc_directory(self.endpoint)
            if unsafe:
                # Whoever could replace the socket could answer in the daemon's place.
                raise TransportError(f"refusing to connect to {self.endpoint}: {unsafe}", code=ErrorCode.CONFIG_INVALID)
            _check_listening(self.endpoint)
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if is_tcp(self.endpoint):
                if self.curve is not None:
                    self.curve.apply(sock)
                # A refused CURVE handshake is otherwise silent (ZeroMQ just retries):
                # watch for it so the caller learns why instead of waiting for a timeout.
                self._monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
                self._handshake_failures = 0
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            if self._monitor is not None:
                self._sock.disable_monitor()
                self._monitor.close(0)
                self._monitor = None
            self._sock.close(0)
            self._sock = None

    def _check_handshake(self) -> None:
        """Raise AUTH_FAILED if the daemon refused our CURVE handshake (tcp:// only)."""
        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._reset()
                raise TransportError(f"{self.endpoint} refused this client's CURVE key (not in the daemon's "
                                     f"security.client_keys_dir, or control_keys_dir?)", code=ErrorCode.AUTH_FAILED)
            if (event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    and event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH):
                self._reset()
                side = ("the daemon does not use CURVE on it" if self.curve is not None
                        else "it requires CURVE keys (--server-key and --client-key)")
                raise TransportError(f"cannot talk to {self.endpoint}: {side}", code=ErrorCode.AUTH_FAILED)
            self._handshake_failures += 1  # no detail: often a wrong server key; told at timeout

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: str, arrays: Sequence[np.ndarray] | Sequence[bytes] = (), *, timeout: float | None = None,
             **fields: Any) -> tuple[dict[str, Any], list[zmq.Frame]]:
        """Send one request and wait for its reply; returns (header, data frames).

        Raises :class:`TransportError` on timeout (``TIMEOUT``) or an unreadable
        reply (``PROTOCOL_ERROR``), and the typed error for an error reply.
        """
        request_id = f"{self._prefix}{next(self._ids)}"
        header = {"v": protocol.PROTOCOL_VERSION, "id": request_id, "op": op,
                  **{k: v for k, v in fields.items() if v is not None}}
        frames: list[Any] = [protocol.dumps(header)]
        for a in arrays:
            frames.append(a if isinstance(a, (bytes, bytearray, memoryview)) else memoryview(a).cast("B"))
        sock = self._socket()
        sock.send_multipart(frames, copy=False)
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            ready = dict(poller.poll(remaining * 1000)) if remaining > 0 else {}
            self._check_handshake()
            if sock not in ready:
                if remaining > 0 and ready:
                    continue  # only a monitor event
                failed = self._handshake_failures
                self._reset()  # Lazy Pirate: a late reply must not be read as the next call's
                if failed:
                    raise TransportError(f"no reply from {self.endpoint} within {wait:.1f}s: {failed} CURVE "
                                         f"handshake(s) failed (wrong server public key?)",
                                         code=ErrorCode.AUTH_FAILED)
                raise TransportError(f"no reply from {self.endpoint} within {wait:.1f}s (is edged running?)",
                                     code=ErrorCode.TIMEOUT)
            reply = sock.recv_multipart(copy=False)
            try:
                head = protocol.parse_header(reply[0].buffer, max_bytes=1 << 24)
            except Exception as exc:
                self._reset()
                raise TransportError(f"unreadable reply from {self.endpoint}: {exc}", code=ErrorCode.PROTOCOL_ERROR) from None
            if head.get("id") != request_id and head.get("id") is not None:
                continue  # a stale reply to an earlier request; skip it
            if not head.get("ok"):
                raise from_wire(head.get("error") or {"code": "INTERNAL", "message": "error reply without error"})
            return head, reply[1:]

    # -- operations --------------------------------------------------------------------------

    def predict(self, inputs: np.ndarray | Mapping[str, np.ndarray] | Sequence[np.ndarray], *,
                model: str | None = None, deadline_ms: float | None = None, priority: str | None = None,
                top_k: int = 0, retry_throttled: int = 0, wait: bool = False,
                timeout: float | None = None) -> Prediction:
        """Run one inference.

        ``inputs`` is one ndarray (single-input model), a dict name → ndarray,
        or a list in the model's input order.  With ``retry_throttled=N`` a
        ``THROTTLED`` reply is retried up to N times after its ``retry_after_ms``;
        otherwise :class:`~edged.errors.Throttled` is raised.  ``wait=True``
        asks the daemon to queue a request over the rate limit and pace it
        instead of refusing it (bounded by the queue and ``deadline_ms``; pass a
        ``timeout`` long enough for the wait).
        """
        if isinstance(inputs, Mapping):
            named = [(str(k), protocol.as_wire_array(v)) for k, v in inputs.items()]
        elif isinstance(inputs, np.ndarray):
            named = [(None, protocol.as_wire_array(inputs))]
        else:
            named = [(None, protocol.as_wire_array(v)) for v in inputs]
        metas = [protocol.tensor_meta(a, n) for n, a in named]
        return self._predict(metas, [a for _, a in named], model=model, deadline_ms=deadline_ms,
                             priority=priority, top_k=top_k, retry_throttled=retry_throttled, wait=wait,
                             timeout=timeout)

    def predict_image(self, image: bytes | str | os.PathLike[str], *, model: str | None = None,
                      input_name: str | None = None, top_k: int = 0, deadline_ms: float | None = None,
                      priority: str | None = None, retry_throttled: int = 0, wait: bool = False,
                      timeout: float | None = None) -> Prediction:
        """Send an encoded JPEG/PNG (bytes or a path); the daemon decodes and preprocesses it."""
        data = image if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()
        meta: dict[str, Any] = {"encoding": "image"}
        if input_name:
            meta["name"] = input_name
        return self._predict([meta], [bytes(data)], model=model, deadline_ms=deadline_ms, priority=priority,
                             top_k=top_k, retry_throttled=retry_throttled, wait=wait, timeout=timeout)

    def _predict(self, metas: list[dict[str, Any]], payload: list[Any], *, retry_throttled: int,
                 timeout: float | None, **fields: Any) -> Prediction:
        attempt = 0
        while True:
            try:
                # top_k=0 and wait=False are the defaults and stay off the wire; a
                # deadline_ms of 0 is a real deadline (already due) and is sent.
                sent = {k: v for k, v in fields.items()
                        if v is not None and not (k in ("top_k", "wait") and not v)}
                head, frames = self.call("predict", payload, inputs=metas, timeout=timeout, **sent)
                break
            except Throttled as exc:
                if attempt >= retry_throttled:
                    raise
                attempt += 1
                time.sleep(max(exc.retry_after_ms, 1) / 1000.0)
        descs = head.get("outputs", [])
        if len(descs) != len(frames):
            raise TransportError(f"reply describes {len(descs)} outputs but carries {len(frames)} frames",
                                 code=ErrorCode.PROTOCOL_ERROR)
        try:
            outputs = [protocol.array_from_frame(d, f.buffer, i) for i, (d, f) in enumerate(zip(descs, frames))]
        except Exception as exc:
            raise TransportError(f"bad output frames: {exc}", code=ErrorCode.PROTOCOL_ERROR) from None
        return Prediction(outputs, head.get("model", ""), head.get("version", ""), head.get("delegate", ""),
                          head.get("runtime", ""), head.get("profile"), head.get("timing", {}),
                          head.get("top_k"), head, head.get("request_id"))

    def feedback(self, prediction: Prediction | str, *, label: str | int | None = None,
                 correct: bool | None = None, model: str | None = None) -> dict[str, Any]:
        """Tell the daemon the truth about an earlier prediction (live accuracy, probation).

        ``prediction`` is a :class:`Prediction` or its ``request_id``; give exactly
        one of ``label`` (the true class, label text or index) and ``correct``.
        Raises :class:`~edged.errors.NotFoundError` (``UNKNOWN_REQUEST``) when the
        daemon no longer remembers the prediction (restarted, already reported, or
        older than its window), :class:`~edged.errors.RequestError` for a bad label.
        """
        rid = prediction.request_id if isinstance(prediction, Prediction) else prediction
        if not rid:
            raise RequestError("this prediction carries no request_id (an older daemon?)")
        fields: dict[str, Any] = {"request_id": rid, "model": model}
        if label is not None:
            fields["label"] = label
        if correct is not None:
            fields["correct"] = bool(correct)
        return self.call("feedback", **fields)[0]

    def info(self, model: str | None = None) -> dict[str, Any]:
        return self.call("info", model=model)[0]

    def health(self) -> dict[str, Any]:
        return self.call("health")[0]

    def stats(self) -> dict[str, Any]:
        return self.call("stats")[0]

    def status(self) -> dict[str, Any]:
        """Daemon status (control endpoint only)."""
        return self.call("status")[0]
