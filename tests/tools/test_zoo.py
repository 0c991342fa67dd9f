"""The committed ``zoo/`` (made by scripts/prepare_model.py): provenance recorded, every version valid.

Needs no TensorFlow: it checks the published files with the same code as ``edged validate``.
Under tflite-runtime 2.14 a version whose manifest has a newer ``min_runtime`` must be refused
with the message naming both versions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[2] / "zoo"
VERSIONS = sorted(p for p in (ZOO / "digits").glob("v*") if p.is_dir()) if (ZOO / "digits").is_dir() else []


def test_zoo_has_six_versions():
    assert [p.name for p in VERSIONS] == ["v1", "v2", "v3", "v4", "v5", "v6"]


@pytest.mark.runtime  # CI runs it again under tflite-runtime 2.14: v2 must be refused there
@pytest.mark.parametrize("path", VERSIONS, ids=[p.name for p in VERSIONS])
def test_zoo_manifest_records_command_and_seed_and_validates(path: Path):
    from edged.repository.check import run_checks

    m = json.loads((path / "manifest.json").read_text())
    assert m["created_by"]["command"].startswith("python scripts/prepare_model.py")
    assert isinstance(m["created_by"]["seed"], int)
    assert m["accuracy"]["value"] >= 0.9 and m["accuracy"]["source_model"]["value"] >= 0.95
    runtime = os.environ.get("EDGED_RUNTIME", "auto")
    need = (m.get("min_runtime") or {}).get("tflite-runtime")
    if runtime == "tflite-runtime" and need:
        # Refused up front with both versions named, not a crash in AllocateTensors.
        from edged.errors import ModelError
        from edged.runtime.backends import select_backend

        have = select_backend(runtime).version
        if tuple(map(int, have.split(".")[:2])) < tuple(map(int, need.split(".")[:2])):
            with pytest.raises(ModelError, match=rf"needs tflite-runtime >= {need}, this daemon runs tflite-runtime"):
                run_checks(path, runtime)
            return
    assert run_checks(path, runtime)["ok"]


@pytest.mark.runtime
def test_zoo_detector_validates_on_this_runtime():
    """The synthetic SSD detector (scripts/make_detector_model.py): its custom op exists in both runtimes."""
    from edged.repository.check import run_checks

    assert run_checks(ZOO / "detector" / "v1", os.environ.get("EDGED_RUNTIME", "auto"))["ok"]
