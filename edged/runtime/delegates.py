"""The delegate ladder: Edge TPU → XNNPACK → plain CPU kernels.

``auto`` takes the first rung that works and logs why each higher rung was
skipped.  An explicit ``edgetpu`` that cannot load is an error, not a silent
fallback: the operator asked for the accelerator and must hear it is missing.

XNNPACK is the runtimes' *default* delegate: it is applied when the
interpreter is built with ``OpResolverType.AUTO``.  ``cpu`` builds with
``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` so only the reference/optimized builtin
kernels run.  The runtimes do not report whether XNNPACK took any nodes, so
"xnnpack" in status means "built with the default delegate enabled".
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.errors import ModelError
from edged.runtime.backends import Backend
from edged.runtime.files import EDGETPU_MODEL, MODEL_FILE

log = logging.getLogger("edged.runtime")



class DelegateUnavailable(ModelError):
    """An explicitly requested delegate cannot be used; no other version can fix that."""


@dataclass
class DelegatePlan:
    """What to build interpreters with: the rung chosen and why others were skipped."""

    name: str  # "edgetpu" | "xnnpack" | "cpu"
    model_file: Path
    delegates: list[Any] = field(default_factory=list)
    op_resolver: Any = None
    fallbacks: list[str] = field(default_factory=list)

    def interpreter_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.delegates:
            kwargs["experimental_delegates"] = self.delegates
        if self.op_resolver is not None:
            kwargs["experimental_op_resolver_type"] = self.op_resolver
        return kwargs


def _edgetpu_delegate(backend: Backend, library: str, device: str, dlopen: Callable[[str], Any]) -> Any:
    # dlopen first: when the library is missing, the runtimes' load_delegate raises
    # OSError but then its Delegate.__del__ trips over a half-built object and prints
    # an "Exception ignored" traceback into the log.  Our own dlopen fails cleanly.
    dlopen(library)
    options = {"device": device} if device else {}
    return backend.load_delegate(library, options)


def plan(
    backend: Backend,
    choice: str,
    version_dir: Path,
    default_model: Path,
    *,
    edgetpu_device: str = "",
    edgetpu_library: str = "libedgetpu.so.1",
    dlopen: Callable[[str], Any] = ctypes.CDLL,
) -> DelegatePlan:
    """Pick the delegate rung for one version directory.

    Raises :class:`ModelError` when ``choice`` is ``edgetpu`` and either the
    version has no ``model_edgetpu.tflite`` or ``libedgetpu`` cannot load.
    """
    fallbacks: list[str] = []
    edgetpu_model = version_dir / EDGETPU_MODEL
    if choice in ("auto", "edgetpu"):
        reason = None
        if not edgetpu_model.is_file():
            reason = f"no {EDGETPU_MODEL} in {version_dir}"
        else:
            try:
                delegate = _edgetpu_delegate(backend, edgetpu_library, edgetpu_device, dlopen)
            except (ValueError, OSError, RuntimeError) as exc:
                reason = f"cannot load Edge TPU delegate {edgetpu_library}" + (
                    f" (device {edgetpu_device})" if edgetpu_device else "") + f": {exc}"
            else:
                return DelegatePlan("edgetpu", edgetpu_model, [delegate])
        if choice == "edgetpu":
            raise DelegateUnavailable(f"delegate = 'edgetpu' but {reason}; install libedgetpu1-std, attach the "
                             f"accelerator, or set runtime.delegate = 'auto'")
        fallbacks.append(f"edgetpu skipped: {reason}")
    resolver = backend.op_resolver
    if choice in ("auto", "xnnpack"):
        return DelegatePlan("xnnpack", default_model, [], resolver.AUTO if resolver else None, fallbacks)
    if resolver is None:  # pragma: no cover - very old runtimes
        fallbacks.append("cpu: this runtime cannot disable its default delegate; XNNPACK stays on")
        return DelegatePlan("xnnpack", default_model, [], None, fallbacks)
    return DelegatePlan("cpu", default_model, [], resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES, fallbacks)


def cpu_fallback(backend: Backend, failed: DelegatePlan, error: Exception) -> DelegatePlan | None:
    """The next rung after ``failed`` could not build an interpreter, or None."""
    if failed.name == "cpu" or backend.op_resolver is None:
        return None
    reason = f"{failed.name} failed: {error}"
    model = failed.model_file
    if failed.name == "edgetpu":
        model = failed.model_file.with_name(MODEL_FILE)
    return DelegatePlan("cpu", model, [], backend.op_resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                        [*failed.fallbacks, reason])
