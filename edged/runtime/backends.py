"""Interpreter backends: LiteRT (default), tflite-runtime, or full TensorFlow.

``auto`` tries them in that order.  All three expose the same ``Interpreter`` and
``load_delegate`` API (they are builds of the same C++ core), so the rest of
edged only sees a :class:`Backend`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from edged.errors import ErrorCode, ModelError

log = logging.getLogger("edged.runtime")

#: backend name -> (module to import, distribution whose version we report)
CANDIDATES: dict[str, tuple[str, str]] = {
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
    "tensorflow": ("tensorflow", "tensorflow"),
}
AUTO_ORDER = ("litert", "tflite-runtime", "tensorflow")


@dataclass(frozen=True)
class Backend:
    name: str
    version: str
    interpreter_cls: Any
    load_delegate: Callable[..., Any]
    #: OpResolverType enum, or None if this build lacks it.
    op_resolver: Any

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def _from_module(name: str, module: ModuleType, dist: str) -> Backend:
    if name == "tensorflow":
        lite = module.lite
        version = getattr(module, "__version__", "?")
        return Backend(name, version, lite.Interpreter, lite.experimental.load_delegate,
                       getattr(lite.experimental, "OpResolverType", None))
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # e.g. a vendored build
        version = "?"
    return Backend(name, version, module.Interpreter, module.load_delegate, getattr(module, "OpResolverType", None))


def select_backend(choice: str = "auto", importer: Callable[[str], ModuleType] = importlib.import_module) -> Backend:
    """Import the interpreter backend named by ``choice`` (config ``runtime.backend``).

    Raises :class:`ModelError` when the chosen backend (or, for ``auto``, every
    backend) cannot be imported; the message lists what was tried and the
    ``pip install`` that fixes it.
    """
    order = AUTO_ORDER if choice == "auto" else (choice,)
    failures = []
    for name in order:
        if name not in CANDIDATES:
            raise ModelError(f"unknown runtime backend {name!r}", code=ErrorCode.CONFIG_INVALID)
        module_name, dist = CANDIDATES[name]
        try:
            module = importer(module_name)
        except Exception as exc:  # ImportError, or a broken native build raising anything
            failures.append(f"{name}: {exc}")
            if choice == "auto":
                log.info("runtime %s unavailable (%s); trying the next", name, exc)
            continue
        return _from_module(name, module, dist)
    hint = 'pip install ai-edge-litert (or "edged[tflite-runtime]")'
    raise ModelError(f"no TFLite runtime could be imported ({'; '.join(failures)}); {hint}")
