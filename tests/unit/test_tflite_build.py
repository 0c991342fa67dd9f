"""Models from edged.testing.tflite_build load and compute what they claim, on the installed runtime.

The runtime is ai_edge_litert unless ``EDGED_RUNTIME=tflite-runtime`` (CI runs
the suite a second time in an environment with tflite-runtime 2.14).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.testing import tflite_build as tb

pytestmark = pytest.mark.runtime

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = "tflite-runtime" if os.environ.get("EDGED_RUNTIME") == "tflite-runtime" else "litert"


def interpreter_cls() -> Any:
    module = "tflite_runtime.interpreter" if RUNTIME == "tflite-runtime" else "ai_edge_litert.interpreter"
    return importlib.import_module(module).Interpreter


def litert_only(what: str) -> None:
    """Skip outside the LiteRT run: ``what`` was made with LiteRT and is checked with it.

    Under EDGED_RUNTIME=tflite-runtime the session check (tests/conftest.py) would rightly
    see LiteRT loaded under that run's name.
    """
    if RUNTIME != "litert":
        pytest.skip(f"{what} are LiteRT's; this run is for tflite-runtime")
    pytest.importorskip("ai_edge_litert.interpreter")


def load(model: bytes) -> Any:
    it = interpreter_cls()(model_content=model)
    it.allocate_tensors()
    return it


def run(model: bytes, *inputs: np.ndarray) -> list[np.ndarray]:
    it = load(model)
    for d, x in zip(it.get_input_details(), inputs):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]


def digits_like(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((1, 8, 8, 1), dtype=np.float32) * 16).astype(np.float32)


def test_affine_model_computes_x_times_a_plus_b():
    (y,) = run(tb.affine_model([1, 4], 2.0, 1.0), np.array([[0, 1, 2, -3]], np.float32))
    np.testing.assert_array_equal(y, [[1, 3, 5, -5]])


def test_float_mlp_matches_numpy_and_uses_the_given_names():
    rng = np.random.default_rng(3)
    w1, b1 = rng.normal(size=(16, 64)).astype(np.float32), rng.normal(size=16).astype(np.float32)
    w2, b2 = rng.normal(size=(10, 16)).astype(np.float32), rng.normal(size=10).astype(np.float32)
    model = tb.float_mlp([1, 8, 8, 1], [(w1, b1), (w2, b2)], input_name="image", output_name="probs")
    it = load(model)
    assert [d["name"] for d in it.get_input_details()] == ["image"]
    assert [d["name"] for d in it.get_output_details()] == ["probs"]
    assert list(it.get_output_details()[0]["shape"]) == [1, 10]

    x = digits_like()
    (y,) = run(model, x)
    h = np.maximum(x.reshape(1, 64) @ w1.T + b1, 0) @ w2.T + b2
    expected = np.exp(h - h.max()) / np.exp(h - h.max()).sum()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-6)


def test_float_mlp_rejects_layers_that_do_not_chain():
    with pytest.raises(ValueError, match="layer 1"):
        tb.float_mlp([1, 4], [(np.ones((3, 4)), np.ones(3)), (np.ones((2, 5)), np.ones(2))])


def test_builds_are_deterministic():
    assert tb.random_classifier(seed=5) == tb.random_classifier(seed=5)
    assert tb.mobilenet_class_model(seed=1, input_size=32, alpha=0.25) == \
        tb.mobilenet_class_model(seed=1, input_size=32, alpha=0.25)


def test_two_seeds_same_contract_different_outputs():
    a, b = tb.random_classifier(seed=1), tb.random_classifier(seed=2)
    ia, ib = load(a), load(b)
    for da, db in zip(ia.get_input_details() + ia.get_output_details(),
                      ib.get_input_details() + ib.get_output_details()):
        assert (da["name"], da["dtype"], list(da["shape"])) == (db["name"], db["dtype"], list(db["shape"]))
    (ya,), (yb,) = run(a, digits_like()), run(b, digits_like())
    assert np.isclose(ya.sum(), 1.0, atol=1e-5) and np.isclose(yb.sum(), 1.0, atol=1e-5)
    assert not np.allclose(ya, yb, atol=1e-3)


def test_nan_model_runs_and_outputs_nan():
    (y,) = run(tb.nan_model(), digits_like())
    assert y.shape == (1, 10) and np.isnan(y).all()


def test_custom_op_model_fails_to_load_naming_the_op():
    with pytest.raises((RuntimeError, ValueError), match=tb.MISSING_CUSTOM_OP):
        run(tb.custom_op_model(), digits_like())


def test_fc_version_too_new_for_tflite_runtime_2_14():
    model = tb.random_classifier(fc_version=tb.FC_VERSION_TOO_NEW)
    version = importlib.metadata.version("tflite-runtime" if RUNTIME == "tflite-runtime" else "ai-edge-litert")
    if RUNTIME == "tflite-runtime" and version.startswith("2.14."):
        with pytest.raises(ValueError, match=r"Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'"):
            load(model)
    elif RUNTIME == "litert":
        # LiteRT 2.x resolves FULLY_CONNECTED up to version 14 and computes the same thing.
        np.testing.assert_array_equal(run(model, digits_like())[0], run(tb.random_classifier(), digits_like())[0])
    else:
        pytest.skip(f"no expectation recorded for {RUNTIME} {version}")


def test_any_runtime_rejects_an_absurd_op_version():
    with pytest.raises((RuntimeError, ValueError), match="FULLY_CONNECTED.*version '999'"):
        load(tb.random_classifier(fc_version=999))


def test_slow_model_has_the_fast_contract_and_finite_probabilities():
    fast, slow = load(tb.random_classifier()), load(tb.slow_model(size=32, depth=2))
    for df, ds in zip(fast.get_input_details() + fast.get_output_details(),
                      slow.get_input_details() + slow.get_output_details()):
        assert (df["name"], df["dtype"], list(df["shape"])) == (ds["name"], ds["dtype"], list(ds["shape"]))
    (y,) = run(tb.slow_model(size=32, depth=2), digits_like())
    assert np.isfinite(y).all() and np.isclose(y.sum(), 1.0, atol=1e-4)


def test_quantized_mlp_agrees_with_the_float_model():
    rng = np.random.default_rng(7)
    layers = [(rng.normal(0, 0.2, (32, 64)), rng.normal(0, 0.1, 32)), (rng.normal(0, 0.2, (10, 32)), np.zeros(10))]
    calib = rng.random((64, 1, 8, 8, 1)) * 16
    fmodel = tb.float_mlp([1, 8, 8, 1], layers, softmax=False)
    for io in ("uint8", "int8"):
        qmodel = tb.quantized_mlp([1, 8, 8, 1], layers, calib, io_dtype=io)
        it = load(qmodel)
        din, dout = it.get_input_details()[0], it.get_output_details()[0]
        assert din["dtype"] == np.dtype(io) and dout["dtype"] == np.dtype(io)
        in_scale, in_zp = din["quantization"]
        out_scale, out_zp = dout["quantization"]
        assert in_scale > 0 and out_scale > 0
        for x in calib[:8].astype(np.float32):
            q = np.clip(np.round(x / in_scale) + in_zp, np.iinfo(io).min, np.iinfo(io).max).astype(io)
            (yq,) = run(qmodel, q)
            (yf,) = run(fmodel, x)
            y = (yq.astype(np.float64) - out_zp) * out_scale
            assert np.argmax(y) == np.argmax(yf)
            assert np.max(np.abs(y - yf)) < 0.05 * np.ptp(yf) + 3 * out_scale


def test_quantized_mlp_with_softmax_outputs_probabilities():
    rng = np.random.default_rng(8)
    layers = [(rng.normal(0, 0.2, (10, 64)), np.zeros(10))]
    calib = rng.random((16, 1, 8, 8, 1)) * 16
    it = load(tb.quantized_mlp([1, 8, 8, 1], layers, calib, softmax=True, output_name="probs"))
    out = it.get_output_details()[0]
    assert out["name"] == "probs" and out["quantization"] == (1.0 / 256.0, 0)


def test_mobilenet_class_model_contract_and_input_sensitivity():
    model = tb.mobilenet_class_model(seed=0, input_size=64, alpha=0.25, classes=100)
    it = load(model)
    din, dout = it.get_input_details()[0], it.get_output_details()[0]
    assert din["dtype"] == np.uint8 and list(din["shape"]) == [1, 64, 64, 3]
    assert dout["dtype"] == np.uint8 and list(dout["shape"]) == [1, 100]
    rng = np.random.default_rng(0)
    (a,) = run(model, rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8))
    (b,) = run(model, rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8))
    # Not saturated or collapsed: outputs spread over the uint8 range and depend on the input.
    assert a.std() > 5 and not np.array_equal(a, b)


def test_full_size_mobilenet_class_model_loads_and_runs():
    model = tb.mobilenet_class_model()
    assert 3_000_000 < len(model) < 8_000_000
    (y,) = run(model, np.full((1, 224, 224, 3), 128, np.uint8))
    assert y.shape == (1, 1000) and y.dtype == np.uint8


def test_op_rejects_unknown_option_fields():
    g = tb.GraphBuilder()
    x = g.input("x", [1, 4])
    y = g.tensor("y", [1, 4])
    with pytest.raises(TypeError, match="fusedActivation"):
        g.op("SOFTMAX", [x], [y], fusedActivation="RELU")


def test_default_model_is_reproducible():
    pytest.importorskip("sklearn")
    litert_only("the bundled model's goldens")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_default_model.py"), "--check"],
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_ssd_detector_model_has_the_detection_postprocess_layout_and_finds_colour_cells():
    from edged.runtime import detection

    model = tb.ssd_detector_model(size=64, grid=4, max_detections=25)
    it = load(model)
    assert [d["name"] for d in it.get_output_details()] == [
        "TFLite_Detection_PostProcess", "TFLite_Detection_PostProcess:1", "TFLite_Detection_PostProcess:2",
        "TFLite_Detection_PostProcess:3"]
    img = np.zeros((1, 64, 64, 3), np.uint8)
    img[0, 16:32, 48:64, 2] = 255  # a blue cell at row 1, column 3
    outputs = run(model, img)
    detection.check_layout("ssd", [o.shape for o in outputs])
    assert int(outputs[3][0]) == 1
    rows = detection.ssd(outputs, 0.4)
    assert rows[0, 0] == 2 and rows[0, 1] > 0.9
    np.testing.assert_allclose(rows[0, 2:], [0.25, 0.75, 0.5, 1.0], atol=1e-5)
    assert not rows[1:].any()


def test_detector_zoo_model_is_reproducible():
    litert_only("the zoo detector's goldens")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_detector_model.py"), "--check"],
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr + proc.stdout
