"""`edged pack` and `edged validate` as an operator runs them (subprocesses, no daemon)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from edged.testing import tflite_build as tb


def edged(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=120)


def test_pack_then_validate_then_refuse_a_tampered_copy(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(tb.random_classifier(seed=3))
    x = tmp_path / "x.npy"
    np.save(x, np.ones((1, 8, 8, 1), np.float32))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(i) for i in range(10)) + "\n")
    repo = tmp_path / "repo"
    r = edged("pack", str(model), "--name", "digits", "--version", "v7", "--repo", str(repo), "--labels", str(labels),
              "--golden-input", str(x), "--accuracy", '{"metric": "top1", "value": 0.91, "dataset": "test split"}',
              "--min-runtime", "tflite-runtime=2.14", "--notes", "from the CLI test", "--json")
    assert r.returncode == 0, r.stderr
    vdir = Path(json.loads(r.stdout)["path"])
    assert vdir == repo / "digits" / "v7"
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["accuracy"] == {"metric": "top1", "value": 0.91, "dataset": "test split"}
    assert manifest["min_runtime"] == {"tflite-runtime": "2.14"}
    assert set(manifest["files"]) >= {"model.tflite", "labels.txt", "golden/0.input.npy", "golden/0.output0.npy"}

    r = edged("validate", str(vdir))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"ok: {vdir} (1 golden sample(s)")

    # versions are immutable: a second pack of v7 is refused
    r = edged("pack", str(model), "--name", "digits", "--version", "v7", "--repo", str(repo))
    assert r.returncode != 0 and "already exists" in r.stderr

    # a file changed after publishing fails validation with its name
    (vdir / "labels.txt").write_text("tampered\n")
    r = edged("validate", str(vdir))
    assert r.returncode == 6 and "labels.txt" in r.stderr, (r.returncode, r.stderr)


def test_pack_rejects_bad_flag_values_with_the_flag_named(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(tb.random_classifier())
    base = ["pack", str(model), "--name", "m", "--version", "v1", "--repo", str(tmp_path / "repo")]
    r = edged(*base, "--min-runtime", "tflite-runtime")
    assert r.returncode == 3 and "--min-runtime" in r.stderr
    r = edged(*base, "--accuracy", "{top1: 0.9}")
    assert r.returncode == 3 and "--accuracy: not JSON" in r.stderr
    r = edged(*base, "--accuracy", '{"top1": 0.9}')  # valid JSON, but not what a manifest allows
    assert r.returncode == 3 and "accuracy.metric" in r.stderr
    assert not (tmp_path / "repo" / "m" / "v1").exists()
