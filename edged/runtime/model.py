"""One model version loaded into a pool of interpreters.

A :class:`LoadedModel` owns ``workers`` interpreters built from the same model
bytes with ``num_threads`` threads each, and optionally one *solo* interpreter with
``solo_threads`` threads for a request that runs alone (the daemon decides; see
:meth:`LoadedModel.run`): one client gets every core, many clients get one
interpreter each.  There is no explicit close: a version is released when the last
reference goes (the slot moved on and in-flight requests finished), so a swap
never has to wait for, or cut off, a request running on the old version.  An interpreter is not thread-safe, so each call to :meth:`run` takes one
from the pool for the duration of set/invoke/get; ``invoke()`` releases the GIL,
so ``workers`` threads really run in parallel.  Outputs are copied out before the
interpreter goes back to the pool.

The model file is read into memory once (``model_content``) instead of letting
TFLite mmap it: an operator deleting or overwriting the active version's files
must not crash the daemon or change its answers.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged import fsafe
from edged.errors import ErrorCode, ModelError, RequestError
from edged.runtime import delegates as delegates_mod
from edged.runtime.backends import Backend
from edged.runtime.files import LITE_MODEL, MODEL_FILE
from edged.runtime.preprocess import DEFAULT_IMAGE_FORMATS, Preprocessing, decode_image

log = logging.getLogger("edged.runtime")



@dataclass(frozen=True)
class TensorSpec:
    name: str
    index: int
    dtype: np.dtype
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @classmethod
    def from_details(cls, d: Mapping[str, Any]) -> TensorSpec:
        scale, zero_point = d.get("quantization", (0.0, 0))
        return cls(d["name"], int(d["index"]), np.dtype(d["dtype"]), tuple(int(x) for x in d["shape"]),
                   float(scale), int(zero_point))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape),
                "quantization": {"scale": self.scale, "zero_point": self.zero_point}}


@dataclass
class RunResult:
    outputs: list[np.ndarray]
    invoke_us: int
    cpu_s: float
    #: Interpreter threads this run had (``num_threads``, or ``solo_threads`` when it ran solo).
    threads: int = 1


@dataclass
class LoadSpec:
    """Everything needed to load a version; built by the repository layer."""

    name: str
    version: str
    path: Path
    backend: Backend
    delegate: str = "auto"
    workers: int = 1
    num_threads: int = 1
    #: Threads of the solo interpreter; none is built unless it exceeds ``num_threads``.
    solo_threads: int = 0
    variant: str = "full"  # "full" | "lite"
    edgetpu_device: str = ""
    edgetpu_library: str = "libedgetpu.so.1"
    preprocessing: dict[str, Any] | None = None
    labels: list[str] | None = None
    manifest: dict[str, Any] | None = field(default=None, repr=False)


def explain_load_error(backend: Backend, model_file: Path, exc: BaseException) -> str:
    """A message an operator can act on for an interpreter that would not build."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Didn't find op for builtin opcode" in str(exc) or "Op builtin_code out of range" in str(exc):
        return (f"{model_file}: the model uses an operator version {backend.describe()} does not have "
                f"({text}); convert it for an older runtime or upgrade the runtime")
    if "custom op" in str(exc).lower() or "Encountered unresolved custom op" in str(exc):
        return f"{model_file}: the model needs a custom operator this runtime lacks ({text})"
    return f"{model_file}: cannot load with {backend.describe()}: {text}"


class LoadedModel:
    """A version ready to serve.  Build with :meth:`load`; dropped when unreferenced."""

    def __init__(self, spec: LoadSpec, plan: delegates_mod.DelegatePlan, content: bytes,
                 interpreters: list[Any], solo: Any = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.version = spec.version
        self.delegate = plan.name
        self.fallbacks = plan.fallbacks
        self.model_file = plan.model_file
        self.size = len(content)
        self._content = content  # kept alive: interpreters reference these bytes
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        first = interpreters[0]
        self.inputs = [TensorSpec.from_details(d) for d in first.get_input_details()]
        self.outputs = [TensorSpec.from_details(d) for d in first.get_output_details()]
        self._by_name = {t.name: i for i, t in enumerate(self.inputs)}
        for interp in interpreters:
            self._pool.put(interp)
        self.pool_size = len(interpreters)
        self._plan = plan
        self._solo = solo
        self._solo_lock = threading.Lock()
        self.preprocessing = Preprocessing.from_manifest(spec.preprocessing)
        self.labels = spec.labels
        # Recent invoke() times: the baseline a successor's probation is compared with.
        self.recent_invoke_us: deque[int] = deque(maxlen=512)

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, spec: LoadSpec, pause: Callable[[], None] | None = None, *, with_solo: bool = True) -> LoadedModel:
        """Build, allocate and warm ``spec.workers`` interpreters.

        ``with_solo=False`` leaves the solo interpreter for :meth:`add_solo`, so a
        swap holds two versions' pools, not two pools and two solo interpreters.

        ``pause``, when given, is called between one interpreter's build or warm-up
        and the next.  A swap under load passes a short sleep: ``allocate_tensors()``
        holds the GIL for milliseconds, and spacing the builds out keeps any one
        request from waiting behind more than one of them.

        Raises :class:`ModelError` with an actionable message when the file is
        missing, the runtime rejects an operator, a custom op is missing, or an
        explicitly requested delegate cannot load.
        """
        default_file = spec.path / MODEL_FILE
        if spec.variant == "lite" and (spec.path / LITE_MODEL).is_file():
            default_file = spec.path / LITE_MODEL
        plan = delegates_mod.plan(spec.backend, spec.delegate, spec.path, default_file,
                                  edgetpu_device=spec.edgetpu_device, edgetpu_library=spec.edgetpu_library)
        while True:
            try:
                # A regular file of the version, no link, read in bounded time (edged.fsafe).
                content = fsafe.read_bytes(plan.model_file.parent, plan.model_file.name)
            except OSError as exc:
                raise ModelError(f"{plan.model_file}: cannot read model: {exc.strerror}") from None
            try:
                interpreters = []
                for i in range(max(1, spec.workers)):
                    if i and pause is not None:
                        pause()
                    interpreters.append(cls._build(spec, plan, content))
                solo = None
                if with_solo and cls.wants_solo(spec, plan):
                    if pause is not None:
                        pause()
                    solo = cls._build(spec, plan, content, spec.solo_threads)
                model = cls(spec, plan, content, interpreters, solo)
                model.warm(pause)
                break
            except ModelError:
                raise
            except Exception as exc:  # the runtimes raise ValueError/RuntimeError for bad models
                nxt = delegates_mod.cpu_fallback(spec.backend, plan, exc) if spec.delegate in ("auto", "xnnpack") else None
                if nxt is None:
                    raise ModelError(explain_load_error(spec.backend, plan.model_file, exc)) from None
                log.warning("%s/%s: %s; falling back to %s", spec.name, spec.version, nxt.fallbacks[-1], nxt.name)
                plan = nxt
        for reason in plan.fallbacks:
            log.info("%s/%s: %s", spec.name, spec.version, reason)
        return model

    @property
    def solo_threads(self) -> int:
        """Threads of the solo interpreter, 0 when there is none (yet, or any more)."""
        return self.spec.solo_threads if self._solo is not None else 0

    @staticmethod
    def wants_solo(spec: LoadSpec, plan: delegates_mod.DelegatePlan) -> bool:
        """A solo interpreter only helps on the CPU, with more threads than the pool's.

        An Edge TPU runs the model itself (and its delegate is opened once), and
        ``num_threads = 0`` already lets the runtime take every core.
        """
        return plan.name != "edgetpu" and spec.num_threads > 0 and spec.solo_threads > spec.num_threads

    @staticmethod
    def _build(spec: LoadSpec, plan: delegates_mod.DelegatePlan, content: bytes, threads: int | None = None) -> Any:
        kwargs = plan.interpreter_kwargs()
        threads = spec.num_threads if threads is None else threads
        if threads > 0:
            kwargs["num_threads"] = threads
        interp = spec.backend.interpreter_cls(model_content=content, **kwargs)
        interp.allocate_tensors()
        return interp

    def warm(self, pause: Callable[[], None] | None = None) -> None:
        """Run every interpreter once on zeros, so the first real request pays no lazy setup."""
        held = [self._pool.get() for _ in range(self.pool_size)]
        try:
            for interp in held + ([self._solo] if self._solo is not None else []):
                if pause is not None:
                    pause()
                self._warm_one(interp)
        finally:
            for interp in held:
                self._pool.put(interp)

    def _warm_one(self, interp: Any) -> None:
        """Run ``interp`` once on zeros in every input (``warm``, ``add_solo``)."""
        for spec in self.inputs:
            interp.set_tensor(spec.index, np.zeros(spec.shape, spec.dtype))
        interp.invoke()

    def add_solo(self, pause: Callable[[], None] | None = None) -> bool:
        """Build and warm the solo interpreter if the spec wants one and there is none; True if built.

        Called by the swap thread once the version serves: lone requests run on the
        pool meanwhile.  A failure is logged, and the version serves without one.
        """
        if self._solo is not None or not self.wants_solo(self.spec, self._plan):
            return False
        if pause is not None:
            pause()
        try:
            solo = self._build(self.spec, self._plan, self._content, self.spec.solo_threads)
            self._warm_one(solo)
        except Exception as exc:  # noqa: BLE001 - the pool serves on; the solo interpreter is an extra
            log.warning("%s/%s: no solo interpreter (%s); lone requests run on one interpreter thread",
                        self.name, self.version, exc)
            return False
        with self._solo_lock:
            self._solo = solo
        return True

    def drop_solo(self) -> None:
        """Release the solo interpreter (a version kept only for rollback); a request using it finishes first."""
        with self._solo_lock:
            self._solo = None

    def p95_invoke_us(self) -> float | None:
        """p95 of the recent invoke() times (the probation baseline), or None before any."""
        recent = list(self.recent_invoke_us)
        return float(np.percentile(np.asarray(recent), 95)) if recent else None

    # -- serving ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name, "version": self.version, "delegate": self.delegate,
            "runtime": self.spec.backend.describe(), "variant": self.spec.variant,
            "file": self.model_file.name, "size": self.size, "workers": self.pool_size,
            "num_threads": self.spec.num_threads, "solo_threads": self.solo_threads,
            "inputs": [t.describe() for t in self.inputs], "outputs": [t.describe() for t in self.outputs],
            "labels": len(self.labels) if self.labels else 0,
        }

    def contract(self) -> dict[str, Any]:
        return {"inputs": [t.describe() for t in self.inputs], "outputs": [t.describe() for t in self.outputs]}

    def arrange(self, names: Sequence[str | None], arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Order request tensors as the model's inputs and check dtype and shape.

        Tensors are matched by name when every one is named, else by position.
        Raises :class:`RequestError` (``BAD_REQUEST``/``BAD_DTYPE``/``BAD_SHAPE``).
        """
        if len(arrays) != len(self.inputs):
            raise RequestError(f"{self.name} takes {len(self.inputs)} input(s), got {len(arrays)}")
        ordered: list[np.ndarray | None] = [None] * len(self.inputs)
        if all(names):
            for name, arr in zip(names, arrays):
                if name not in self._by_name:
                    raise RequestError(f"{self.name} has no input named {name!r} "
                                       f"(inputs: {', '.join(self._by_name)})")
                ordered[self._by_name[name]] = arr
        else:
            ordered = list(arrays)
        for spec, arr in zip(self.inputs, ordered):
            assert arr is not None
            if arr.dtype != spec.dtype:
                raise RequestError(f"input {spec.name!r} must be {spec.dtype.name}, got {arr.dtype.name}",
                                   code=ErrorCode.BAD_DTYPE)
            if tuple(arr.shape) != spec.shape:
                raise RequestError(f"input {spec.name!r} must have shape {[int(d) for d in spec.shape]}, got {list(arr.shape)}",
                                   code=ErrorCode.BAD_SHAPE)
        return ordered  # type: ignore[return-value]

    def image_input(self, data: bytes | memoryview, index: int, *, max_pixels: int,
                    formats: Sequence[str] = DEFAULT_IMAGE_FORMATS) -> np.ndarray:
        spec = self.inputs[index]
        return decode_image(data, spec.shape, spec.dtype, (spec.scale, spec.zero_point), self.preprocessing,
                            max_pixels=max_pixels, formats=formats)

    def run(self, inputs: Sequence[np.ndarray], alone: bool = False) -> RunResult:
        """Run one inference on already-arranged inputs; thread-safe.

        ``alone``: the caller knows no other request is running or waiting, so the
        solo interpreter (all cores) is used if there is one and it is free; else
        one from the pool.  The solo interpreter is only ever tried, never waited
        for: a request that races another for it runs on the pool at once.
        """
        solo = alone and self._solo is not None and self._solo_lock.acquire(blocking=False)
        interp = self._solo if solo else None
        if interp is None:  # not alone, busy, or dropped between the check and the lock
            if solo:
                self._solo_lock.release()
                solo = False
            interp = self._pool.get()
        try:
            for spec, arr in zip(self.inputs, inputs):
                interp.set_tensor(spec.index, arr)
            cpu0 = time.thread_time()
            t0 = time.perf_counter_ns()
            interp.invoke()
            invoke_us = (time.perf_counter_ns() - t0) // 1000
            cpu_s = time.thread_time() - cpu0
            # get_tensor returns a copy, so nothing aliases the interpreter once it is back in the pool.
            outputs = [interp.get_tensor(spec.index) for spec in self.outputs]
        finally:
            if solo:
                self._solo_lock.release()
            else:
                self._pool.put(interp)
        self.recent_invoke_us.append(int(invoke_us))
        return RunResult(outputs, int(invoke_us), cpu_s, self.spec.solo_threads if solo else self.spec.num_threads)

    def classifier_output(self, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, float, int] | None:
        """The first output as a classifier's flat scores, as the model gave them (no copy), with
        the (scale, zero point) that dequantize an integer output (scale 0: none); None if it is not one."""
        if not outputs:
            return None
        out = np.asarray(outputs[0])
        if out.ndim > 2 or (out.ndim == 2 and out.shape[0] != 1):
            return None
        spec = self.outputs[0]
        if spec.dtype.kind in "iu" and spec.scale:
            return out.reshape(-1), spec.scale, spec.zero_point
        return out.reshape(-1), 0.0, 0

    def scores(self, outputs: Sequence[np.ndarray]) -> np.ndarray | None:
        """The first output as a classifier's dequantized float64 scores, or None if it is not one."""
        found = self.classifier_output(outputs)
        if found is None:
            return None
        raw, scale, zero_point = found
        values = raw.astype(np.float64)
        return (values - zero_point) * scale if scale else values

    def top_k(self, outputs: Sequence[np.ndarray], k: int) -> list[dict[str, Any]] | None:
        """Top-k of the first output for a classifier ([1, N] or [N]); scores dequantized, non-finite ones None."""
        if k <= 0:
            return None
        values = self.scores(outputs)
        if values is None:
            return None
        order = np.argsort(-values, kind="stable")[:k]
        labels = self.labels or []
        # A NaN or infinite score has no JSON form: it is sent as null (NaN ranks last).
        return [{"index": int(i), "label": labels[i] if i < len(labels) else str(int(i)),
                 "score": float(values[i]) if np.isfinite(values[i]) else None}
                for i in order]
