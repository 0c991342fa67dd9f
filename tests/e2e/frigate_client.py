"""A client that speaks exactly as Frigate's ``zmq`` detector plugin does, and Frigate's SSD rule.

Modelled line by line on ``frigate/detectors/plugins/zmq_ipc.py`` (blakeblackshear/frigate,
ZmqIpcDetector): a REQ socket with RCVTIMEO/SNDTIMEO 200 ms and LINGER 0; the model
hand-shake (30 s) before the first frame and after every timeout or ZeroMQ error,
with the socket re-created; frames as ``[header JSON, C-order bytes]``; a reply decoded
as one 480-byte frame or ``[header, bytes]``; zeros on any failure.  Unlike Frigate it
counts timeouts, which is what the tests assert on.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import zmq

#: How long Frigate waits for the reply to its hand-shake or a model push (its frames get
#: ``request_timeout_ms``); tests of something other than latency wait this long for a frame too.
HANDSHAKE_TIMEOUT_MS = 30_000


def frigate_tflite_detect_raw(outputs: list[np.ndarray], thresh: float = 0.4) -> np.ndarray:
    """Frigate's ``tflite_detect_raw`` (frigate/detectors/detector_utils.py), minus the interpreter."""
    boxes, class_ids, scores = outputs[0][0], outputs[1][0], outputs[2][0]
    count = int(outputs[3][0])
    detections = np.zeros((20, 6), np.float32)
    for i in range(count):
        if scores[i] < thresh or i == 20:
            break
        detections[i] = [class_ids[i], float(scores[i]), boxes[i][0], boxes[i][1], boxes[i][2], boxes[i][3]]
    return detections


class FrigateZmqClient:
    def __init__(self, endpoint: str, model_path: str, model_type: str = "ssd", request_timeout_ms: int = 200,
                 linger_ms: int = 0) -> None:
        self._context = zmq.Context()
        self._endpoint = endpoint
        self._request_timeout_ms = request_timeout_ms
        self._linger_ms = linger_ms
        self._model_path = model_path
        self._model_type = model_type
        self._socket: Any = None
        self.timeouts = 0
        self.errors: list[str] = []
        self._create_socket()
        self._model_ready = False
        self._model_name = os.path.basename(model_path)
        self._initialize_model()
        self._zero_result = np.zeros((20, 6), np.float32)

    @property
    def model_ready(self) -> bool:
        return self._model_ready

    def _create_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=self._linger_ms)
        self._socket = self._context.socket(zmq.REQ)
        self._socket.setsockopt(zmq.RCVTIMEO, self._request_timeout_ms)
        self._socket.setsockopt(zmq.SNDTIMEO, self._request_timeout_ms)
        self._socket.setsockopt(zmq.LINGER, self._linger_ms)
        self._socket.connect(self._endpoint)

    def _initialize_model(self) -> None:
        try:
            self._model_ready = self._check_and_transfer_model()
        except Exception as e:  # noqa: BLE001 - Frigate logs and carries on
            self.errors.append(f"initialize: {e}")
            self._model_ready = False

    def _json_request(self, frames: list[bytes]) -> dict[str, Any] | None:
        self._socket.send_multipart(frames)
        original_timeout = self._socket.getsockopt(zmq.RCVTIMEO)
        self._socket.setsockopt(zmq.RCVTIMEO, HANDSHAKE_TIMEOUT_MS)
        try:
            response_frames = self._socket.recv_multipart()
        finally:
            self._socket.setsockopt(zmq.RCVTIMEO, original_timeout)
        if len(response_frames) != 1:
            self.errors.append("unexpected response format")
            return None
        try:
            return json.loads(response_frames[0].decode("utf-8"))
        except json.JSONDecodeError:
            self.errors.append("non-JSON response")
            return None

    def _check_and_transfer_model(self) -> bool:
        header = {"model_request": True, "model_name": self._model_name}
        response = self._json_request([json.dumps(header).encode("utf-8")])
        if response is None:
            return False
        model_available = response.get("model_available", False)
        model_loaded = response.get("model_loaded", False)
        if model_available and model_loaded:
            return True
        if model_available and not model_loaded:
            return False
        return self.send_model_data()

    def send_model_data(self) -> bool:
        self.last_push: dict[str, Any] | None = None
        with open(self._model_path, "rb") as f:
            model_data = f.read()
        header = {"model_data": True, "model_name": self._model_name}
        response = self._json_request([json.dumps(header).encode("utf-8"), model_data])
        self.last_push = response
        if response is None:
            return False
        return bool(response.get("model_saved", False) and response.get("model_loaded", False))

    def _build_header(self, tensor_input: np.ndarray) -> bytes:
        header = {"shape": list(tensor_input.shape), "dtype": str(tensor_input.dtype.name),
                  "model_type": self._model_type}
        return json.dumps(header).encode("utf-8")

    def _decode_response(self, frames: list[bytes]) -> np.ndarray:
        try:
            if len(frames) == 1:
                buf = frames[0]
                if len(buf) != 20 * 6 * 4:
                    self.errors.append(f"unexpected payload size {len(buf)}")
                    return self._zero_result
                return np.frombuffer(buf, dtype=np.float32).reshape((20, 6))
            if len(frames) >= 2:
                header = json.loads(frames[0].decode("utf-8"))
                return np.frombuffer(frames[1], dtype=np.dtype(header.get("dtype", "float32"))).reshape(
                    tuple(header.get("shape", [])))
            self.errors.append("empty reply")
            return self._zero_result
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"decode: {exc}")
            return self._zero_result

    def detect_raw(self, tensor_input: np.ndarray) -> np.ndarray:
        if not self._model_ready:
            return self._zero_result
        try:
            self._socket.send_multipart([self._build_header(tensor_input),
                                         memoryview(tensor_input.tobytes(order="C"))])
            return self._decode_response(self._socket.recv_multipart())
        except zmq.Again:
            self.timeouts += 1
            self._create_socket()
            self._initialize_model()
            return self._zero_result
        except zmq.ZMQError as exc:
            self.errors.append(f"ZMQError: {exc}")
            self._create_socket()
            self._initialize_model()
            return self._zero_result

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()

    def __enter__(self) -> FrigateZmqClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
