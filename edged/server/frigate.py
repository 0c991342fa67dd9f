"""Frigate's ``zmq`` detector plugin, answered by edged (docs/frigate.md).

Frigate connects a REQ socket and speaks three messages (its plugin is
``frigate/detectors/plugins/zmq_ipc.py``); each becomes an ordinary
:class:`~edged.server.dispatch.Request` that goes through the one dispatch
door, with an op of its own:

============================================  ===================  ==========================================
Frigate sends                                 op                   edged answers
============================================  ===================  ==========================================
``{"model_request": true, "model_name": F}``  ``frigate_model``    ``{"model_available", "model_loaded"}``
``{"model_data": true, "model_name": F}``     ``frigate_push``     ``{"model_saved", "model_loaded"}``
+ the model file's bytes
``{"shape", "dtype", "model_type"}``          ``frigate_detect``   one 480-byte frame: float32 ``(20, 6)``
+ the tensor's bytes
============================================  ===================  ==========================================

A frame is an ordinary predict (same scheduler, power governor, probation
statistics, hot swap and rollback); only the reply differs.  Frigate cannot
read an edged error: a failed frame is answered with no detections, counted
in ``frigate_dropped`` by reason, and logged once per distinct problem.  A
frame still queued when ``budget_ms`` has passed since it arrived is answered
at once by the main loop (:meth:`FrigateEndpoint.expire`), so Frigate (200 ms
timeout) never resets its socket because edged was throttled.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edged import protocol
from edged.config import FrigateConfig
from edged.errors import EdgedError, ErrorCode, NotFoundError, RequestError, RetryableError
from edged.repository import layout
from edged.runtime import detection
from edged.server.dispatch import Request, dispatch, error_reply
from edged.states import DaemonState

log = logging.getLogger("edged.frigate")

#: Wire error code -> the ``reason`` label of ``frigate_dropped``.
_DROP_REASONS = {
    ErrorCode.THROTTLED.value: "throttled",
    ErrorCode.DEADLINE_EXCEEDED.value: "budget",
    ErrorCode.BAD_SHAPE.value: "input",
    ErrorCode.BAD_DTYPE.value: "input",
    ErrorCode.BAD_SIZE.value: "input",
    ErrorCode.TOO_LARGE.value: "input",
    ErrorCode.UNKNOWN_MODEL.value: "no_model",
    ErrorCode.SHUTTING_DOWN.value: "shutting_down",
}
#: Reasons that are the daemon protecting itself, not a problem to log (they are counted).
_QUIET = frozenset({"throttled", "budget", "shutting_down"})

_NO_DETECTIONS = detection.no_detections().tobytes()
#: Distinct problems logged at most; past it, one line says so (a hostile peer could vary names forever).
_MAX_LOGGED = 256


class FrigateEndpoint:
    """Turns Frigate's messages into requests and edged replies into Frigate's frames."""

    def __init__(self, daemon: Any, config: FrigateConfig) -> None:
        self.daemon = daemon
        self.config = config
        self.sock: Any = None
        #: Frames admitted and not yet answered, oldest first (all share one budget).
        self._pending: deque[Any] = deque()
        #: Work a background thread hands back to the main loop (pushed models).
        self._calls: deque[Callable[[], None]] = deque()
        self._logged: set[str] = set()
        self._log_lock = threading.Lock()
        #: A pushed model is being stored or validated: one at a time (each copies the model).
        self._pushing = False
        #: Loaded model -> model_type -> why its layout cannot answer Frigate (None: it can).
        self._layouts: weakref.WeakKeyDictionary[Any, dict[str, str | None]] = weakref.WeakKeyDictionary()

    # -- reading --------------------------------------------------------------------------

    def handle(self, envelope: list[Any], body: list[Any], received: float) -> None:
        """One message from Frigate (main thread): classify, then the dispatch door.

        A message over ``server.max_message_bytes`` is refused like on every other
        socket (``TOO_LARGE``), but only once classified: Frigate reads a refused
        frame as no detections and a refused push as not saved, and nothing else.
        """
        limits = self.daemon.config.server
        try:
            raw = protocol.parse_object(body[0].buffer, limits.max_header_bytes)
        except EdgedError as exc:
            raw = {"_error": exc.message}
        if raw.get("model_request") is True:
            op = "frigate_model"
        elif raw.get("model_data") is True:
            op = "frigate_push"
        else:
            op = "frigate_detect"
        req = Request("frigate", envelope, {**raw, "op": op}, body[1:], received)
        try:
            protocol.check_message_size(body, limits.max_message_bytes)
        except EdgedError as exc:
            self.daemon.reply(req, error_reply(req.id, req.op, exc))
            return
        dispatch(self.daemon, req)

    # -- replies --------------------------------------------------------------------------

    def encode(self, req: Request, header: dict[str, Any], arrays: list[Any]) -> list[Any]:
        """Frames of the reply Frigate expects for ``req`` (any thread).

        ``header`` is what every other endpoint would have sent: an error (``ok``
        false) or, for a frame, a predict reply whose ``arrays`` are the model's
        outputs, post-processed here, on the worker thread that computed them.
        """
        failed = header.get("ok") is False
        op = req.op
        if op == "frigate_model":
            reply = {"model_available": False, "model_loaded": False} if failed else header["frigate"]
            if failed:
                self.log_once(f"model:{header['error'].get('message')}", logging.ERROR,
                              "Frigate asked for model %r and none can answer: %s", req.header.get("model_name"),
                              header["error"].get("message"))
            return [json.dumps(reply).encode()]
        if op == "frigate_push":
            reply = {"model_saved": False, "model_loaded": False} if failed else header["frigate"]
            if failed:
                self.log_once(f"push:{header['error'].get('message')}", logging.WARNING,
                              "Frigate pushed model %r; refused: %s", req.header.get("model_name"),
                              header["error"].get("message"))
            return [json.dumps(reply).encode()]
        if failed:
            return [self._drop(req, header["error"])]
        model = req.extra["model"]
        try:
            outputs = [detection.dequantize(np.asarray(a), spec.scale, spec.zero_point)
                       for a, spec in zip(arrays, model.outputs)]
            _, height, width = _input_hwc(model)
            rows = detection.postprocess(req.extra["model_type"], outputs, min_score=self.config.min_score,
                                         width=width, height=height)
        except detection.LayoutError as exc:
            return [self._drop(req, {"code": ErrorCode.BAD_REQUEST.value, "message": str(exc),
                                     "frigate_reason": "layout"})]
        except Exception as exc:  # noqa: BLE001 - a bug here must cost one frame, not the worker
            log.exception("post-processing a Frigate frame failed")
            return [self._drop(req, {"code": ErrorCode.INTERNAL.value, "message": f"post-processing failed: {exc}"})]
        return [rows.astype(np.float32, copy=False).tobytes()]

    def _drop(self, req: Request, error: dict[str, Any]) -> bytes:
        reason = error.get("frigate_reason") or _DROP_REASONS.get(error.get("code"), "error")
        self.daemon.stats.frigate_dropped(reason)
        message = str(error.get("message"))
        level = logging.INFO if reason in _QUIET else logging.ERROR
        # One line per distinct problem (a wrong shape repeats at 5-30 fps); quiet
        # reasons once per reason, their count is in stats.
        key = reason if reason in _QUIET else f"{reason}:{message}"
        self.log_once(key, level, "Frigate frame answered with no detections (%s): %s%s", reason, message,
                      "; further ones are counted in stats frigate_dropped" if reason in _QUIET else "")
        return _NO_DETECTIONS

    def log_once(self, key: str, level: int, msg: str, *args: Any) -> None:
        """Log ``msg`` the first time ``key`` is seen (any thread); arguments are shortened."""
        with self._log_lock:
            if key in self._logged or len(self._logged) > _MAX_LOGGED:
                return
            self._logged.add(key)
            if len(self._logged) > _MAX_LOGGED:
                msg, args = "more than %d distinct Frigate problems; no more are logged (see stats)", (_MAX_LOGGED,)
        log.log(level, msg, *(_short(a) for a in args))

    # -- the main loop's hooks ----------------------------------------------------------------

    def track(self, job: Any) -> None:
        self._pending.append(job)

    def expire(self, now: float) -> float:
        """Answer queued frames past their budget; seconds until the next one is due (or 1 h)."""
        while self._calls:
            self._calls.popleft()()
        while self._pending:
            job = self._pending[0]
            if job.deadline > now:
                return job.deadline - now
            self._pending.popleft()
            if job.claim.acquire(blocking=False):  # no worker has it: it never will
                self.daemon.stats.shed(job.model.name, job.model.version)
                self.daemon.reply(job.req, {"ok": False, "error": {
                    "code": ErrorCode.DEADLINE_EXCEEDED.value,
                    "message": f"still queued {self.config.budget_ms:.0f} ms after it arrived (frigate.budget_ms)"}})
        return 3600.0

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the main loop (from any thread)."""
        self._calls.append(fn)
        self.daemon.wake()

    # -- the commands' work ------------------------------------------------------------------

    def resolve(self, frigate_name: Any) -> Any:
        """The serving edged model that answers Frigate; raises NotFoundError (logged by the caller)."""
        model = self.daemon.models.get(self.config.model or None)
        if frigate_name is not None:
            self.log_once(f"map:{frigate_name}", logging.INFO, "Frigate model %r is answered by edged model %s",
                          frigate_name, model.name)
        return model

    def model_status(self, frigate_name: Any) -> dict[str, bool]:
        try:
            self.resolve(frigate_name)
        except NotFoundError as exc:
            self.log_once(f"model:{exc.message}", logging.ERROR,
                          "Frigate asked for model %r: %s (set frigate.model)", frigate_name, exc.message)
            return {"model_available": False, "model_loaded": False}
        return {"model_available": True, "model_loaded": True}

    def detect(self, req: Request) -> None:
        """Check one frame against the model and submit it as a predict (main thread)."""
        h = req.header
        kind = detection.canonical_model_type(h.get("model_type"))
        if kind is None:
            raise RequestError(f"model_type {h.get('model_type')!r} is not supported by edged "
                               f"(supported: ssd, yolo-generic)", frigate_reason="model_type")
        model = self.resolve(None)
        problem = self._layout_problem(model, kind)
        if problem:
            raise RequestError(problem, frigate_reason="layout")
        spec = model.inputs[0]
        if h["dtype"] != spec.dtype.name:
            raise RequestError(f"Frigate sends {h['dtype']}{h['shape']}, {model.name}/{model.version} takes "
                               f"{spec.dtype.name}{list(spec.shape)} (set Frigate's input_dtype)",
                               code=ErrorCode.BAD_DTYPE)
        if tuple(h["shape"]) != spec.shape:
            raise RequestError(f"Frigate sends {h['dtype']}{h['shape']}, {model.name}/{model.version} takes "
                               f"{spec.dtype.name}{list(spec.shape)} (set Frigate's width, height and "
                               f"input_tensor)", code=ErrorCode.BAD_SHAPE)
        h.update({"model": model.name, "inputs": [{"dtype": h["dtype"], "shape": h["shape"]}],
                  "deadline_ms": self.config.budget_ms, "wait": True, "priority": "normal", "top_k": 0})
        req.extra["model_type"] = kind
        self.track(self.daemon.submit_predict(req))

    def _layout_problem(self, model: Any, kind: str) -> str | None:
        """Why ``model`` cannot answer ``kind`` frames (None: it can), checked once per loaded version.

        Keyed by the loaded model itself: a hot swap loads a new object, checked on its
        first frame.  Weakly, so the cache never keeps a swapped-out version in memory.
        """
        checked = self._layouts.setdefault(model, {})
        if kind not in checked:
            try:
                detection.check_layout(kind, [spec.shape for spec in model.outputs])
            except detection.LayoutError as exc:
                checked[kind] = f"{model.name}/{model.version}: {exc}"
            else:
                inputs = len(model.inputs)
                checked[kind] = None if inputs == 1 else f"{model.name} takes {inputs} inputs; Frigate sends one"
        return checked[kind]

    def push(self, req: Request) -> None:
        """Store a pushed model as the next version and swap to it, off the main thread."""
        if not self.config.accept_pushed_models:
            self.log_once("push", logging.WARNING, "Frigate pushed model %r; refused (frigate.accept_pushed_models "
                          "is false): install it with 'edged pack'", req.header.get("model_name"))
            self.daemon.reply(req, {"frigate": {"model_saved": False, "model_loaded": False}})
            return
        if self._pushing:
            self.log_once("push-busy", logging.WARNING, "Frigate pushed model %r while an earlier push is being "
                          "validated; refused", _short(req.header.get("model_name")))
            self.daemon.reply(req, {"frigate": {"model_saved": False, "model_loaded": False}})
            return
        name = self.config.model or None
        if name is None:
            names = sorted(self.daemon.models.slots)
            if len(names) != 1:
                raise NotFoundError(f"{len(names)} models in the repository; set frigate.model to store a push")
            name = names[0]
        data = bytes(req.frames[0].buffer)
        root, backend = self.daemon.models.root, self.daemon.backend.name
        self._pushing = True
        threading.Thread(target=self._store, args=(req, name, data, root, backend), name="edged-frigate-push",
                         daemon=True).start()

    def _store(self, req: Request, name: str, data: bytes, root: Path, backend: str) -> None:
        from edged.repository.pack import pack

        try:
            numbers = [layout.version_number(v) or 0 for v in layout.version_names(root / name)]
            version = f"v{max(numbers, default=0) + 1}"
            with tempfile.TemporaryDirectory(prefix="edged-frigate-") as tmp:
                src = Path(tmp) / "model.tflite"
                src.write_bytes(data)
                pack(src, name=name, version=version, repo=root, runtime=backend,
                     notes=f"pushed by Frigate as {str(req.header.get('model_name'))[:200]!r}",
                     created_by={"command": "frigate model_data", "seed": 0})
        except Exception as exc:  # noqa: BLE001 - any failure is a refused push, reported to Frigate
            log.error("Frigate's pushed model refused: %s", getattr(exc, "message", exc))
            self._pushing = False
            self.daemon.post(req, {"frigate": {"model_saved": False, "model_loaded": False}})
            return
        log.info("Frigate's pushed model stored as %s/%s; validating", name, version)

        def swapped(result: dict[str, Any] | None, error: BaseException | None) -> None:
            if error is not None:
                log.error("Frigate's pushed model %s/%s refused: %s", name, version, getattr(error, "message", error))
            self._pushing = False
            self.daemon.post(req, {"frigate": {"model_saved": True, "model_loaded": error is None}})

        def swap() -> None:  # on the main loop (expire): nothing may escape it
            if self.daemon.state is DaemonState.DRAINING:  # stored before the stop: the next start takes it
                swapped(None, RetryableError("daemon is shutting down", code=ErrorCode.SHUTTING_DOWN))
                return
            try:
                self.daemon.models.scan()
                self.daemon.models.request("swap", name, version, reason="frigate push", done=swapped)
            except Exception as exc:  # noqa: BLE001 - answered as a refused push
                swapped(None, exc)

        self.call_soon(swap)


def _short(value: Any) -> Any:
    """Peer-supplied text in a log line: at most 200 characters."""
    return value if not isinstance(value, str) or len(value) <= 200 else value[:200] + "..."


def _input_hwc(model: Any) -> tuple[int, int, int]:
    """``(batch, height, width)`` of an NHWC (or NCHW) image input, as Frigate's width/height."""
    shape = model.inputs[0].shape
    if len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):  # NCHW
        return shape[0], shape[2], shape[3]
    if len(shape) == 4:
        return shape[0], shape[1], shape[2]
    return 1, 1, 1
