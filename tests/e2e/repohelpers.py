"""Publishing test models into a repository, and waiting for the daemon to act on them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edged.repository.manifest import Manifest, file_entry, write_manifest
from edged.repository.pack import pack
from edged.testing import tflite_build as tb
from tests.conftest import runtime_choice

GOLDEN = np.full((1, 8, 8, 1), 16.0, np.float32)  # a bright input: every test model is finite on it
GLARING = np.full((1, 8, 8, 1), 100.0, np.float32)  # what fails_on_glaring_inputs() cannot take


def nan_on_dark_inputs() -> bytes:
    """Same contract as random_classifier; finite on bright inputs, NaN (log of a negative) on dark ones.

    Validation (golden samples, bright) passes; real traffic (dark) trips probation.
    """
    g = tb.GraphBuilder()
    x = g.input("image", [1, 8, 8, 1])
    flat = g.reshape(x, [1, 64], "flat")
    w = g.const("w", np.ones((10, 64), np.float32))
    b = g.const("b", np.full(10, -100.0, np.float32))
    h = g.tensor("h", [1, 10])
    g.op("FULLY_CONNECTED", [flat, w, b], [h])
    y = g.tensor("probs", [1, 10])
    g.op("LOG", [h], [y])
    return g.build([y])


def fails_on_glaring_inputs() -> bytes:
    """Same contract as random_classifier; invoke() fails (a runtime error) on a glaring input.

    The first pixel indexes a 32-row table: dark (0.0, the warm-up) and bright (16.0, the
    golden sample) inputs pick a row, a glaring one (100.0) is out of range, which GATHER
    refuses at run time.  Loading and validation pass; that traffic makes the model fail.
    """
    g = tb.GraphBuilder()
    x = g.input("image", [1, 8, 8, 1])
    flat = g.reshape(x, [64], "flat")
    first = g.tensor("first", [1])
    g.op("GATHER", [flat, g.const("at", np.array([0], np.int32))], [first], axis=0)
    row = g.tensor("row", [1], "int32")
    g.op("CAST", [first], [row])
    table = g.const("table", np.linspace(0.0, 1.0, 32 * 10, dtype=np.float32).reshape(32, 10))
    y = g.tensor("probs", [1, 10])
    g.op("GATHER", [table, row], [y], axis=0)
    return g.build([y])


def publish(repo: Path, version: str, model: bytes, *, name: str = "m", tmp: Path, golden: bool = True) -> Path:
    """``edged pack`` a model as ``repo/name/version`` (atomic rename, manifest included)."""
    src = tmp / f"{name}-{version}.tflite"
    src.write_bytes(model)
    inputs = []
    if golden:
        g = tmp / f"{name}-{version}-golden.npy"
        np.save(g, GOLDEN)
        inputs.append(g)
    return pack(src, name=name, version=version, repo=repo, golden_inputs=inputs, runtime=runtime_choice())


def publish_unloadable(repo: Path, version: str, model: bytes, *, name: str = "m") -> Path:
    """A version with a correct manifest for a model that cannot be packed normally (it does not load)."""
    vdir = repo / name / version
    vdir.mkdir(parents=True)
    (vdir / "model.tflite").write_bytes(model)
    write_manifest(vdir, Manifest(name=name, version=version, files={"model.tflite": file_entry(vdir / "model.tflite")}))
    return vdir


def versions(daemon: Any, model: str = "m") -> dict[str, Any]:
    r = daemon.cli("ctl", "versions", "--model", model, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def state_of(daemon: Any, version: str, model: str = "m") -> dict[str, Any]:
    return next(v for v in versions(daemon, model)["versions"] if v["version"] == version)


def wait_until(predicate, what: str, timeout: float = 60.0, daemon: Any = None) -> Any:
    """Poll ``predicate`` until it returns a truthy value; bounded, fails with the daemon log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    log = daemon.log() if daemon is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")
