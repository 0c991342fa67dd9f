"""The power-saving variant (model_lite.tflite) is checked like the model itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.errors import ModelError
from edged.repository import check
from edged.repository.manifest import file_entry, load_manifest, write_manifest
from edged.repository.pack import pack
from edged.runtime.backends import select_backend
from edged.testing import tflite_build as tb


def backend_name(runtime: str) -> str:
    """The backend ``runtime`` resolves to (``auto``: the first one installed)."""
    return select_backend(runtime).name


def _sources(tmp_path: Path, lite: bytes) -> tuple[Path, Path]:
    full, lite_file = tmp_path / "full.tflite", tmp_path / "lite.tflite"
    full.write_bytes(tb.random_classifier(seed=1, hidden=(16,)))
    lite_file.write_bytes(lite)
    return full, lite_file


@pytest.mark.runtime
def test_pack_and_validate_check_a_good_lite_file(tmp_path: Path, runtime: str) -> None:
    full, lite = _sources(tmp_path, tb.random_classifier(seed=2))
    vdir = pack(full, name="m", version="v1", repo=tmp_path / "repo", lite=lite, runtime=runtime)
    report = check.run_checks(vdir, runtime)
    assert report["lite"]["ok"] is True and report["runtime"].split()[0] == backend_name(runtime)
    assert "model_lite.tflite" in load_manifest(vdir).files


@pytest.mark.runtime
def test_pack_refuses_a_lite_file_that_does_not_load(tmp_path: Path, runtime: str) -> None:
    full, lite = _sources(tmp_path, b"not a flatbuffer" * 4)
    with pytest.raises(ModelError, match=r"\(--lite\): does not load"):
        pack(full, name="m", version="v1", repo=tmp_path / "repo", lite=lite, runtime=runtime)
    assert not (tmp_path / "repo" / "m" / "v1").exists()  # nothing half-published


@pytest.mark.runtime
def test_pack_refuses_a_lite_file_with_another_contract(tmp_path: Path, runtime: str) -> None:
    full, lite = _sources(tmp_path, tb.random_classifier(input_shape=(1, 4, 4, 1), seed=2))
    with pytest.raises(ModelError, match="drop-in replacement"):
        pack(full, name="m", version="v1", repo=tmp_path / "repo", lite=lite, runtime=runtime)


@pytest.mark.runtime
def test_validation_refuses_a_version_whose_lite_file_is_broken(tmp_path: Path, runtime: str) -> None:
    # A version published by other means (the manifest's hashes match the broken file).
    full, lite = _sources(tmp_path, tb.random_classifier(seed=2))
    vdir = pack(full, name="m", version="v1", repo=tmp_path / "repo", lite=lite, runtime=runtime)
    (vdir / "model_lite.tflite").write_bytes(b"\0" * 64)
    manifest = load_manifest(vdir)
    manifest.files["model_lite.tflite"] = file_entry(vdir / "model_lite.tflite")
    write_manifest(vdir, manifest)
    with pytest.raises(ModelError, match="^model_lite.tflite: "):
        check.run_checks(vdir, runtime)
    with pytest.raises(ModelError, match="model_lite.tflite: "):
        check.validate_in_child(vdir, runtime=runtime, delegate="auto", timeout=120)


def _contract(dtype: str, scale: float, zero_point: int) -> dict:
    t = {"name": "x", "dtype": dtype, "shape": [1, 4], "quantization": {"scale": scale, "zero_point": zero_point}}
    return {"inputs": [t], "outputs": [dict(t, name="y")]}


def test_contract_compares_quantization_of_integer_tensors_only() -> None:
    assert check.same_contract(_contract("uint8", 0.5, 128), _contract("uint8", 0.5, 128))
    assert not check.same_contract(_contract("uint8", 0.5, 128), _contract("uint8", 0.25, 128))
    assert not check.same_contract(_contract("int8", 0.5, 0), _contract("int8", 0.5, -1))
    assert check.same_contract(_contract("float32", 0.0, 0), _contract("float32", 1.0, 3))  # meaningless for floats
    # a float32 scale read back from JSON is the same contract
    assert check.same_contract(_contract("uint8", 0.007843137718737125, 128), _contract("uint8", 0.0078431377, 128))


@pytest.mark.runtime
def test_a_manifest_without_quantization_still_validates_an_integer_model(tmp_path: Path, runtime: str) -> None:
    # Hand-written or third-party manifests may leave quantization out of the contract.
    import json

    model = tmp_path / "q.tflite"
    model.write_bytes(tb.mobilenet_class_model(input_size=32, alpha=0.25, classes=10))
    vdir = pack(model, name="q", version="v1", repo=tmp_path / "repo", runtime=runtime)
    data = json.loads((vdir / "manifest.json").read_text())
    assert data["contract"]["inputs"][0]["dtype"] == "uint8"
    for t in data["contract"]["inputs"] + data["contract"]["outputs"]:
        t.pop("quantization")
    (vdir / "manifest.json").write_text(json.dumps(data))
    report = check.run_checks(vdir, runtime)
    assert report["ok"] is True and report["runtime"].split()[0] == backend_name(runtime)
