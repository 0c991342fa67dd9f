"""manifest.json: parse/validate, atomic write, file verification, contract extraction."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.repository.manifest import (
    MANIFEST_FILE,
    Manifest,
    ManifestError,
    contract_from_details,
    file_entry,
    load_manifest,
    verify_files,
    write_manifest,
)

ROOT = Path(__file__).resolve().parents[2]


def make_version(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A version directory with a model, labels and one golden sample, and its manifest dict."""
    vdir = tmp_path / "digits" / "v3"
    (vdir / "golden").mkdir(parents=True)
    (vdir / "model.tflite").write_bytes(b"TFL3" + bytes(range(256)) * 4)
    (vdir / "labels.txt").write_text("a\nb\n")
    np.save(vdir / "golden" / "0.input.npy", np.zeros((1, 4), np.float32))
    np.save(vdir / "golden" / "0.output0.npy", np.ones((1, 2), np.float32))
    rels = ["model.tflite", "labels.txt", "golden/0.input.npy", "golden/0.output0.npy"]
    data = {
        "format": 1, "name": "digits", "version": "v3",
        "files": {rel: file_entry(vdir / rel) for rel in rels},
        "contract": {
            "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4], "quantization": {"scale": 0.0, "zero_point": 0}}],
            "outputs": [{"name": "y", "dtype": "uint8", "shape": [1, 2],
                         "quantization": {"scale": 0.5, "zero_point": 3}}],
        },
        "preprocessing": {"color": "L", "mean": [0.0], "std": [15.9375], "invert": True},
        "golden": [{"input": "golden/0.input.npy", "outputs": ["golden/0.output0.npy"], "atol": 1e-5, "rtol": 1e-5}],
        "accuracy": {"metric": "top1", "value": 0.97, "dataset": "test"},
        "min_runtime": {"tflite-runtime": "2.16"},
        "notes": "n",
        "created_by": {"command": "pytest", "seed": 0},
    }
    return vdir, data


def minimal_manifest() -> dict[str, Any]:
    return {"format": 1, "name": "m", "version": "v1", "files": {"model.tflite": {"sha256": "0" * 64, "size": 1}}}


def test_round_trip_through_disk(tmp_path: Path):
    vdir, data = make_version(tmp_path)
    m = Manifest.from_dict(data)
    path = write_manifest(vdir, m)
    assert path == vdir / MANIFEST_FILE
    assert json.loads(path.read_text()) == data
    loaded = load_manifest(vdir)
    assert loaded == m and loaded.to_dict() == data
    assert [p.name for p in vdir.iterdir() if p.name.startswith(".")] == []  # no temp file left behind


def test_unknown_top_level_keys_survive_and_optional_fields_default(tmp_path: Path):
    _, data = make_version(tmp_path)
    minimal = {"format": 1, "name": "digits", "version": "3", "files": {"model.tflite": data["files"]["model.tflite"]},
               "future_field": {"x": 1}}
    m = Manifest.from_dict(minimal)
    assert m.golden == [] and m.contract is None and m.notes == "" and m.extra == {"future_field": {"x": 1}}
    assert m.to_dict()["future_field"] == {"x": 1}


def test_to_dict_is_a_copy():
    m = Manifest.from_dict(minimal_manifest())
    m.to_dict()["files"]["model.tflite"]["size"] = -1
    assert m.files["model.tflite"]["size"] != -1


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(format=2), "format"),
    (lambda d: d.update(format=True), "format"),
    (lambda d: d.pop("name"), "name"),
    (lambda d: d.update(name="../evil"), "name"),
    (lambda d: d.update(version="latest"), "version"),
    (lambda d: d.update(files={}), "files"),
    (lambda d: d["files"].pop("model.tflite"), "files"),
    (lambda d: d["files"]["model.tflite"].update(sha256="xyz"), "files.model.tflite.sha256"),
    (lambda d: d["files"]["model.tflite"].update(size=-1), "files.model.tflite.size"),
    (lambda d: d["files"]["model.tflite"].update(size="12"), "files.model.tflite.size"),
    (lambda d: d["files"].update({"../../etc/passwd": d["files"]["labels.txt"]}), "files"),
    (lambda d: d["files"].update({"/etc/passwd": d["files"]["labels.txt"]}), "files"),
    (lambda d: d["files"].update({"in\x00.npy": d["files"]["labels.txt"]}), "files"),
    (lambda d: d["files"].update({"a\nb.txt": d["files"]["labels.txt"]}), "files"),
    (lambda d: d["golden"][0].update(input="g\x00.npy"), "golden[0].input"),
    (lambda d: d["contract"].update(inputs=[]), "contract.inputs"),
    (lambda d: d["contract"]["inputs"][0].update(dtype="float128"), "contract.inputs[0].dtype"),
    (lambda d: d["contract"]["outputs"][0].update(shape=[1, "2"]), "contract.outputs[0].shape"),
    (lambda d: d["contract"]["outputs"][0].update(quantization={"scale": "x"}), "contract.outputs[0].quantization"),
    (lambda d: d["preprocessing"].update(color="CMYK"), "preprocessing.color"),
    (lambda d: d["preprocessing"].update(std=[0.0]), "preprocessing.std"),
    (lambda d: d["preprocessing"].update(invert="yes"), "preprocessing.invert"),
    (lambda d: d["golden"][0].update(input="../x.npy"), "golden[0].input"),
    (lambda d: d["golden"][0].update(outputs=[]), "golden[0].outputs"),
    (lambda d: d["golden"][0].update(atol=-1), "golden[0].atol"),
    (lambda d: d.update(golden={}), "golden"),
    (lambda d: d["accuracy"].update(value="high"), "accuracy.value"),
    (lambda d: d.update(min_runtime={"litert": 2}), "min_runtime"),
    (lambda d: d.update(notes=3), "notes"),
    (lambda d: d.update(created_by="me"), "created_by"),
])
def test_validation_names_the_bad_field(tmp_path: Path, mutate, field: str):
    _, data = make_version(tmp_path)
    bad = copy.deepcopy(data)
    mutate(bad)
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(bad)
    assert str(info.value).startswith(field), str(info.value)
    assert isinstance(info.value, ValueError)


def test_not_an_object():
    with pytest.raises(ManifestError, match="JSON object"):
        Manifest.from_dict([1, 2])


def test_load_missing_and_invalid_json(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_write_replaces_an_existing_manifest(tmp_path: Path):
    vdir, data = make_version(tmp_path)
    (vdir / MANIFEST_FILE).write_text("old")
    write_manifest(vdir, Manifest.from_dict(data))
    assert load_manifest(vdir).version == "v3"


def test_write_failure_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    vdir, data = make_version(tmp_path)

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_manifest(vdir, Manifest.from_dict(data))
    assert not (vdir / MANIFEST_FILE).exists()
    assert [p.name for p in vdir.iterdir() if p.name.startswith(".")] == []


def test_file_entry(tmp_path: Path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert file_entry(p) == {"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "size": 3}


def test_verify_files_clean(tmp_path: Path):
    vdir, data = make_version(tmp_path)
    assert verify_files(vdir, Manifest.from_dict(data)) == []


def test_verify_files_detects_truncation(tmp_path: Path):
    vdir, data = make_version(tmp_path)
    model = vdir / "model.tflite"
    model.write_bytes(model.read_bytes()[:100])
    problems = verify_files(vdir, Manifest.from_dict(data))
    assert problems == [f"model.tflite: truncated (100 bytes, manifest says {data['files']['model.tflite']['size']})"]


def test_verify_files_detects_same_size_corruption(tmp_path: Path):
    vdir, data = make_version(tmp_path)
    model = vdir / "model.tflite"
    raw = bytearray(model.read_bytes())
    raw[10] ^= 0xFF
    model.write_bytes(bytes(raw))
    (problem,) = verify_files(vdir, Manifest.from_dict(data))
    assert problem.startswith("model.tflite: sha256 mismatch")


def test_verify_files_detects_missing_and_grown_files(tmp_path: Path):
    vdir, data = make_version(tmp_path)
    (vdir / "labels.txt").unlink()
    (vdir / "golden" / "0.input.npy").write_bytes(b"x" * 1000)
    problems = verify_files(vdir, Manifest.from_dict(data))
    assert "labels.txt: missing" in problems
    assert any(p.startswith("golden/0.input.npy: size mismatch (1000 bytes") for p in problems)


def test_verify_files_reports_unlisted_golden_that_is_absent(tmp_path: Path):
    vdir, data = make_version(tmp_path)
    data["golden"].append({"input": "golden/9.input.npy", "outputs": ["golden/9.output0.npy"]})
    problems = verify_files(vdir, Manifest.from_dict(data))
    assert problems == ["golden/9.input.npy: golden sample missing", "golden/9.output0.npy: golden sample missing"]


def test_verify_files_refuses_a_symlink_out_of_the_version(tmp_path: Path):
    vdir, data = make_version(tmp_path)
    outside = tmp_path / "outside.txt"
    (vdir / "labels.txt").rename(outside)
    (vdir / "labels.txt").symlink_to(outside)
    [problem] = verify_files(vdir, Manifest.from_dict(data))
    assert problem.startswith("labels.txt: is a symlink")


def test_contract_from_details_matches_the_manifest_layout():
    inputs = [{"name": "image", "index": 0, "shape": np.array([1, 8, 8, 1], np.int32), "dtype": np.float32,
               "quantization": (0.0, 0)}]
    outputs = [{"name": "probs", "index": 5, "shape": np.array([1, 10], np.int32), "dtype": np.uint8,
                "quantization": (np.float32(0.00390625), np.int64(0))}]
    contract = contract_from_details(inputs, outputs)
    assert contract == {
        "inputs": [{"name": "image", "dtype": "float32", "shape": [1, 8, 8, 1],
                    "quantization": {"scale": 0.0, "zero_point": 0}}],
        "outputs": [{"name": "probs", "dtype": "uint8", "shape": [1, 10],
                     "quantization": {"scale": 0.00390625, "zero_point": 0}}],
    }
    json.dumps(contract)  # plain JSON types, no NumPy scalars
    Manifest.from_dict({**minimal_manifest(), "contract": contract})


def test_bundled_default_model_manifest_is_valid_and_matches_its_files():
    vdir = ROOT / "models" / "digits" / "v1"
    m = load_manifest(vdir)
    assert (m.name, m.version) == ("digits", "v1")
    assert verify_files(vdir, m) == []
    assert m.accuracy is not None and m.accuracy["value"] >= 0.95
    assert m.contract is not None and m.contract["inputs"][0]["name"] == "image"


@pytest.mark.parametrize("entry, field", [
    ({"file": "../x.png", "top1": 1, "score": 0.5}, "golden_images[0].file"),
    ({"file": "golden/a.png", "top1": -1, "score": 0.5}, "golden_images[0].top1"),
    ({"file": "golden/a.png", "top1": 1, "score": float("nan")}, "golden_images[0].score"),
    ({"file": "golden/a.png", "top1": 1, "score": 0.5, "atol": -1}, "golden_images[0].atol"),
])
def test_golden_images_are_checked_field_by_field(entry, field):
    from edged.repository.manifest import Manifest, ManifestError

    with pytest.raises(ManifestError, match=re.escape(field)):
        Manifest.from_dict({**minimal_manifest(), "golden_images": [entry]})
    ok = {"file": "golden/a.png", "top1": 1, "score": 0.5, "label": "1", "atol": 0.02}
    assert Manifest.from_dict({**minimal_manifest(), "golden_images": [ok]}).to_dict()["golden_images"] == [ok]
