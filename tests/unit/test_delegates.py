"""The delegate ladder with a fake backend: no Edge TPU library here, as on most machines."""

from __future__ import annotations

import enum
from pathlib import Path

import pytest

from edged.errors import ModelError
from edged.runtime import delegates
from edged.runtime.backends import Backend, select_backend


class FakeResolver(enum.Enum):
    AUTO = 0
    BUILTIN_WITHOUT_DEFAULT_DELEGATES = 3


def fake_backend(load_delegate):
    return Backend("fake", "1.0", object, load_delegate, FakeResolver)


def missing_library(library, options=None):
    raise ValueError(f"Failed to load delegate from {library}")


def test_delegate_library_is_dlopened_before_the_runtime_sees_it(tmp_path):
    (tmp_path / "model_edgetpu.tflite").write_bytes(b"x")
    called = []
    plan = delegates.plan(fake_backend(lambda *a: called.append(a)), "auto", tmp_path, tmp_path / "model.tflite",
                          dlopen=lambda lib: (_ for _ in ()).throw(OSError(f"{lib}: cannot open shared object file")))
    assert plan.name == "xnnpack" and called == [] and "cannot open shared object file" in plan.fallbacks[0]


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.tflite").write_bytes(b"x")
    return tmp_path


def test_auto_without_edgetpu_model_uses_xnnpack(version_dir):
    plan = delegates.plan(fake_backend(missing_library), "auto", version_dir, version_dir / "model.tflite")
    assert plan.name == "xnnpack" and plan.op_resolver is FakeResolver.AUTO
    assert "no model_edgetpu.tflite" in plan.fallbacks[0]


def test_auto_with_edgetpu_model_but_no_library_falls_back_with_reason(version_dir):
    (version_dir / "model_edgetpu.tflite").write_bytes(b"x")
    plan = delegates.plan(fake_backend(missing_library), "auto", version_dir, version_dir / "model.tflite",
                          edgetpu_device="usb:0")
    assert plan.name == "xnnpack" and plan.model_file.name == "model.tflite"
    assert "libedgetpu.so.1" in plan.fallbacks[0] and "usb:0" in plan.fallbacks[0]


def test_explicit_edgetpu_without_library_is_a_clear_error(version_dir):
    (version_dir / "model_edgetpu.tflite").write_bytes(b"x")
    with pytest.raises(ModelError, match="libedgetpu.so.1"):
        delegates.plan(fake_backend(missing_library), "edgetpu", version_dir, version_dir / "model.tflite")


def test_explicit_edgetpu_without_compiled_model_is_a_clear_error(version_dir):
    with pytest.raises(ModelError, match="model_edgetpu.tflite"):
        delegates.plan(fake_backend(missing_library), "edgetpu", version_dir, version_dir / "model.tflite")


def test_edgetpu_chosen_when_library_loads(version_dir):
    (version_dir / "model_edgetpu.tflite").write_bytes(b"x")
    seen = {}

    def loads(library, options=None):
        seen["args"] = (library, options)
        return "DELEGATE"

    plan = delegates.plan(fake_backend(loads), "auto", version_dir, version_dir / "model.tflite",
                          edgetpu_device="pci:0", dlopen=lambda lib: None)
    assert plan.name == "edgetpu" and plan.delegates == ["DELEGATE"]
    assert plan.model_file.name == "model_edgetpu.tflite" and seen["args"] == ("libedgetpu.so.1", {"device": "pci:0"})


def test_cpu_disables_default_delegates(version_dir):
    plan = delegates.plan(fake_backend(missing_library), "cpu", version_dir, version_dir / "model.tflite")
    assert plan.name == "cpu" and plan.op_resolver is FakeResolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def test_failed_xnnpack_falls_back_to_cpu(version_dir):
    backend = fake_backend(missing_library)
    plan = delegates.plan(backend, "auto", version_dir, version_dir / "model.tflite")
    nxt = delegates.cpu_fallback(backend, plan, RuntimeError("XNNPACK delegate failed"))
    assert nxt is not None and nxt.name == "cpu" and "XNNPACK delegate failed" in nxt.fallbacks[-1]
    assert delegates.cpu_fallback(backend, nxt, RuntimeError("again")) is None


@pytest.mark.runtime
def test_real_runtime_reports_the_missing_edgetpu_library(version_dir, backend):
    """The real load_delegate of the runtime this CI leg selects, with no Edge TPU library on this machine."""
    (version_dir / "model_edgetpu.tflite").write_bytes(b"x")
    plan = delegates.plan(backend, "auto", version_dir, version_dir / "model.tflite")
    assert plan.name == "xnnpack"
    assert "cannot load Edge TPU delegate libedgetpu.so.1" in plan.fallbacks[0]


def test_backend_auto_order_and_clear_failure():
    tried = []

    def importer(name):
        tried.append(name)
        raise ImportError(f"No module named {name!r}")

    with pytest.raises(ModelError, match="pip install ai-edge-litert"):
        select_backend("auto", importer)
    assert tried == ["ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow"]
